"""Learning-rate schedules (llm.c's schedulers.h): cosine, linear, constant, wsd.

The non-obvious decision: every value is computed in float32 with llm.c's exact operation order, because
the learning rate feeds AdamW bit for bit. So cosine/linear warm up as (lr * (step+1)) / W while wsd
warms up as lr * ((step+1) / W) (llm.c writes them differently, and in f32 they can differ in the last
bit); cos(pi*r) takes pi*r rounded from double to f32, as cosf(M_PI * r) does.
"""
import math

import numpy as np

from llmc_py import LlmcError

SCHEDULES = ("cosine", "linear", "constant", "wsd")
WSD_DECAY_START = np.float32(0.8)  # wsd decays over the last 20% of the steps

f32 = np.float32


class LearningRateScheduler:
    def __init__(self, kind, learning_rate, warmup_iterations, train_num_batches, final_learning_rate_frac):
        if kind not in SCHEDULES:
            raise LlmcError(f"-k {kind}: unknown learning rate schedule: expected one of {', '.join(SCHEDULES)}")
        self.kind = kind
        self.learning_rate = f32(learning_rate)
        self.warmup_iterations = int(warmup_iterations)
        self.train_num_batches = int(train_num_batches)
        self.final_learning_rate_frac = f32(final_learning_rate_frac)

    def get(self, step):
        """The learning rate of 0-based training step `step`, as a Python float holding an f32 value."""
        return float(getattr(self, "_" + self.kind)(int(step)))

    def _ratio(self, step, start):
        """(step - start) / (N - start) in f32; llm.c asserts it lies in [0, 1]."""
        span = self.train_num_batches - start
        r = f32(step - start) / f32(span) if span != 0 else f32("nan")
        if not 0.0 <= r <= 1.0:
            raise LlmcError(f"-k {self.kind}: step {step} is outside the decay phase {start}..{self.train_num_batches} "
                            f"(warmup -u {self.warmup_iterations}, {self.train_num_batches} steps)")
        return r

    def _min_lr(self):
        return self.learning_rate * self.final_learning_rate_frac

    def _cosine(self, step):
        lr0, W = self.learning_rate, self.warmup_iterations
        if step < W:
            return lr0 * f32(step + 1) / f32(W)
        r = self._ratio(step, W)
        coeff = f32(0.5) * (f32(1.0) + f32(math.cos(float(f32(math.pi * float(r))))))
        min_lr = self._min_lr()
        return min_lr + coeff * (lr0 - min_lr)

    def _linear(self, step):
        lr0, W = self.learning_rate, self.warmup_iterations
        if step < W:
            return lr0 * f32(step + 1) / f32(W)
        r = self._ratio(step, W)
        return lr0 - r * (lr0 - self._min_lr())

    def _constant(self, step):
        return self.learning_rate

    def _wsd(self, step):
        lr0, W = self.learning_rate, self.warmup_iterations
        decay_point = int(WSD_DECAY_START * f32(self.train_num_batches))
        if step < W:
            return lr0 * (f32(step + 1) / f32(W))
        if step < decay_point:
            return lr0
        r = self._ratio(step, decay_point)
        min_lr = self._min_lr()
        return min_lr + (f32(1.0) - np.sqrt(r)) * (lr0 - min_lr)
