"""main.log, llm.c's training log: one line per event, rank 0 only, and only with an output dir (-o).

The non-obvious decision: every event opens the file in append mode, writes its line and closes it again,
so a crash loses nothing. A run starting at step S keeps only the lines of steps before S (rewritten whole,
through a temporary file): a fresh run (S = 0) starts empty, and a run resumed from checkpoint S drops what
the interrupted run logged after that checkpoint, so its log ends up byte-identical to an uninterrupted
run's (llm.c appends, and repeats those steps). Values are rounded to float32 before formatting, as llm.c
passes floats to printf; a step whose update was skipped for a NaN or infinite loss or norm says so.
"""
import os

import numpy as np

from llmc_py import LlmcError
from llmc_py.fileio import atomic_write


def _f32(x):
    return float(np.float32(x))


class Logger:
    def __init__(self, output_dir, process_rank=0, start_step=0):
        self.active = output_dir is not None and int(process_rank) == 0
        self.path = os.path.join(str(output_dir), "main.log") if self.active else None
        if self.active:
            self._keep_before(int(start_step))

    def _keep_before(self, start_step):
        kept = []
        if start_step > 0 and os.path.exists(self.path):
            try:
                with open(self.path, "rb") as f:
                    lines = f.read().splitlines(keepends=True)
            except OSError as e:
                raise LlmcError(f"{self.path}: cannot read the log file: {e.strerror}") from None
            for line in lines:
                step = line.split(b" ", 1)[0][len(b"s:"):]
                if line.startswith(b"s:") and line.endswith(b"\n") and step.isdigit() and int(step) < start_step:
                    kept.append(line)
        with atomic_write(self.path) as f:
            f.write(b"".join(kept))

    def _open(self, mode):
        try:
            return open(self.path, mode, encoding="ascii", newline="\n")
        except OSError as e:
            raise LlmcError(f"{self.path}: cannot open the log file: {e.strerror}") from None

    def _write(self, line):
        if self.active:
            try:
                with self._open("a") as f:
                    f.write(line + "\n")
            except OSError as e:
                raise LlmcError(f"{self.path}: cannot write the log: {e.strerror}") from None

    def log_val(self, step, val_loss):
        self._write(f"s:{int(step)} tel:{_f32(val_loss):.4f}")

    def log_eval(self, step, accuracy):
        self._write(f"s:{int(step)} eval:{_f32(accuracy):.4f}")

    def log_train(self, step, train_loss, lr, grad_norm, nonfinite=False):
        self._write(f"s:{int(step)} trl:{_f32(train_loss):.4f} lr:{_f32(lr):.6f} norm:{_f32(grad_norm):.2f}"
                    + (" skipped:nonfinite" if nonfinite else ""))
