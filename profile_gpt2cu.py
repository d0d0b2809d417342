"""Per-op time table of one GPT-2 training step, grouped as llm.c's profile_gpt2cu.py groups its kernels.

    python profile_gpt2cu.py --device cpu -e d12 -b 4 -t 64
    python profile_gpt2cu.py --device cpu -e gpt2_d12.bin -b 4 -t 64
    python profile_gpt2cu.py -e gpt2_124M_bf16.bin -b 4 -t 1024     # GPU (default), bf16

The non-obvious decision: nothing in llmc_py is changed or switched to a profiling mode. For the
profiled step the op functions that llmc_py.gpt2 calls (encoder, layernorm, matmul, attention, gelu,
fused classifier, global norm, AdamW) are replaced, in that module's namespace only, by thin wrappers
that time each call, and put back afterwards; the step runs the same code as training. llm.c needs Nsight
Compute (and often sudo) for its table; here the timings come from the ops themselves: wall-clock around
each call on CPU, a pair of CUDA events around each op call on GPU (recorded on the op's stream and read
after the step, so the timing itself adds no synchronization; an op's time includes all its kernels and
GEMMs).

Groups follow llm.c's passes: encoder (encoder forward and backward), forward (the transformer blocks),
classifier (from the residual + final layernorm before the LM-head matmul through the final layernorm's
backward: llm.c's six classifier kernels), backward (the blocks), optimizer (grad norm and AdamW).
Unlike llm.c, which profiles one layer and scales it by 12, every layer of the model is run and timed.
"""
import argparse
import contextlib
import math
import time
from collections import defaultdict

import numpy as np

import llmc_py.gpt2 as gpt2_module
from llmc_py import LlmcError, cuda, run_main
from llmc_py.gpt2 import GPT2

# the op functions llmc_py.gpt2 calls, by the name it imports them under
OPS = ("encoder_forward", "encoder_backward", "layernorm_forward", "fused_residual_forward",
       "layernorm_backward", "matmul_forward", "matmul_backward", "attention_forward", "attention_backward",
       "gelu_forward", "fused_classifier", "global_sum", "global_norm_squared", "adamw_update",
       "cast_floatx_to_f32")
GROUPS = ("encoder", "forward", "classifier", "backward", "optimizer")
OPTIMIZER_OPS = ("global_norm_squared", "adamw_update", "cast_floatx_to_f32")
CLASSIFIER_OP = "fused_classifier"


class WallClock:
    """CPU timing: a call's seconds, measured around it."""

    def start(self):
        return time.perf_counter()

    def stop(self, token):
        return time.perf_counter() - token


class EventClock:
    """GPU timing: a pair of CUDA events per call on the current stream; seconds() after the GPU is done."""

    def __init__(self):
        import cupy
        self.cupy = cupy

    def start(self):
        event = self.cupy.cuda.Event()
        event.record()
        return event

    def stop(self, token):
        end = self.cupy.cuda.Event()
        end.record()
        return (token, end)

    def seconds(self, pair):
        start, end = pair
        end.synchronize()
        return self.cupy.cuda.get_elapsed_time(start, end) / 1000.0


@contextlib.contextmanager
def timed_ops(calls, clock=None):
    """Within the block, every op call made by llmc_py.gpt2 appends (op name, clock reading) to `calls`: seconds
    with the default wall clock, an event pair with EventClock (turn into seconds with clock.seconds)."""
    clock = WallClock() if clock is None else clock
    originals = {name: getattr(gpt2_module, name) for name in OPS if hasattr(gpt2_module, name)}

    def wrap(name, fn):
        def timed(*args, **kwargs):
            token = clock.start()
            try:
                return fn(*args, **kwargs)
            finally:
                calls.append((name, clock.stop(token)))
        return timed

    for name, fn in originals.items():
        setattr(gpt2_module, name, wrap(name, fn))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(gpt2_module, name, fn)


def assign_groups(names):
    """The group of each op call, from its name and its place in the step (see the module docstring)."""
    if CLASSIFIER_OP not in names:
        raise LlmcError("profile: the step made no fused_classifier call, cannot place the classifier")
    cls = names.index(CLASSIFIER_OP)
    # residual + lnf layernorm, LM-head matmul | fused classifier | dlnf matmul backward, lnf layernorm backward
    cls_range = range(cls - 2, cls + 3)
    groups = []
    for i, name in enumerate(names):
        if name.startswith("encoder"):
            groups.append("encoder")
        elif name in OPTIMIZER_OPS:
            groups.append("optimizer")
        elif i in cls_range:
            groups.append("classifier")
        else:
            groups.append("forward" if i < cls else "backward")
    return groups


def train_step(model, inputs, targets, step):
    """One step as train_gpt2cu.py runs it: forward, backward, grad norm, clip scale, AdamW."""
    model.forward(inputs)
    model.backward(inputs, targets, 1, 0)
    norm = math.sqrt(model.grad_norm_squared())
    model.update(1e-4, 0.0, 1.0 / norm if norm > 1.0 else 1.0, step + 1)


def profile(model, B, T):
    """Runs a warm-up step (it also initializes the optimizer state, and on the GPU compiles the kernels and
    picks the cuBLASLt algorithms), then one timed step. Returns (calls [(op, seconds)], step seconds)."""
    V = model.config.vocab_size
    i = np.arange(B * T, dtype=np.int64)
    inputs = (i % V).astype(np.int32).reshape(B, T)  # llm.c's dummy tokens i % V
    targets = ((i + 1) % V).astype(np.int32).reshape(B, T)
    model.allocate(B, T)
    train_step(model, inputs, targets, 0)
    calls = []
    clock = EventClock() if model.gpu else WallClock()
    step_timer = cuda.StepTimer(model.gpu)
    with timed_ops(calls, clock):
        step_timer.start()
        train_step(model, inputs, targets, 1)
        wall = step_timer.stop() / 1000.0
    if model.gpu:
        calls = [(name, clock.seconds(pair)) for name, pair in calls]
    return calls, wall


def report(calls, wall):
    """Prints the op table, the per-op summary and the group summary; returns {group: ms}."""
    names = [name for name, _ in calls]
    groups = assign_groups(names)
    ms = [s * 1000.0 for _, s in calls]
    total = sum(ms)
    rows = defaultdict(lambda: [0, 0.0])   # (op, group) -> [calls, ms]
    per_op = defaultdict(lambda: [0, 0.0])
    per_group = {g: 0.0 for g in GROUPS}
    for name, group, t in zip(names, groups, ms):
        rows[name, group][0] += 1
        rows[name, group][1] += t
        per_op[name][0] += 1
        per_op[name][1] += t
        per_group[group] += t

    print()
    print("Op calls:")
    header = f"{'op':<24} {'group':<11} {'calls':>6} {'total ms':>10} {'%':>7}"
    print(header)
    print("." * len(header))
    order = sorted(rows.items(), key=lambda kv: (GROUPS.index(kv[0][1]), -kv[1][1]))
    for (name, group), (n, t) in order:
        print(f"{name:<24} {group:<11} {n:>6} {t:>10.3f} {100 * t / total:>6.2f}%")
    print("." * len(header))
    print(f"{'total':<24} {'':<11} {len(calls):>6} {total:>10.3f} {100.0:>6.2f}%")

    print()
    print("Op type summaries:")
    print(f"  {'op':<24} {'total ms':>10} {'frac':>7} {'calls':>6}")
    for name, (n, t) in sorted(per_op.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:<24} {t:>10.3f} {100 * t / total:>6.2f}% {n:>6}")

    print()
    print(f"In total, a training step takes {total:.3f} ms in its ops "
          f"({wall * 1000:.3f} ms for the whole step, {max(wall * 1000 - total, 0.0):.3f} ms outside the ops), distributed as:")
    labels = {"encoder": "in the encoder", "forward": "in forward blocks", "classifier": "in the classifier part",
              "backward": "in backward blocks", "optimizer": "in the optimizer"}
    for g in GROUPS:
        print(f"  {g:<11} {per_group[g]:10.3f} ms ({100 * per_group[g] / total:5.1f}%) {labels[g]}")
    return per_group


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("-e", default="d12", help="model .bin or descriptor (d6, d12, ...); default d12 (random init)")
    p.add_argument("-b", type=int, default=4, help="micro batch B")
    p.add_argument("-t", type=int, default=64, help="sequence length T")
    p.add_argument("-r", type=int, default=1, choices=[0, 1, 2], help="recompute: 0 none, 1 GELU, 2 GELU+layernorm")
    p.add_argument("--precision", default=None, choices=["bf16", "fp32"], help="default bf16 on cuda, fp32 on cpu")
    p.add_argument("-ge", type=int, default=0, choices=[0, 1, 2], help="GELU fusion (cuda bf16)")
    p.add_argument("-f", type=int, default=1, choices=[0, 1], help="TF32 for the fp32 matmuls on the GPU, as training")
    args = p.parse_args()
    precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    if args.device == "cpu" and precision != "fp32":
        raise LlmcError(f"--precision {precision}: --device cpu runs fp32 only")
    if args.b < 1 or args.t < 1:
        raise LlmcError(f"-b {args.b} -t {args.t}: expected positive sizes")
    where, tf32 = "cpu (NumPy reference)", False
    if args.device == "cuda":
        info = cuda.init_device(0)
        # TF32 exactly when train_gpt2cu.py uses it: fp32, compute capability 8.0 or more, -f 1
        tf32 = precision == "fp32" and int(info.compute_capability) >= 80 and bool(args.f)
        where = f"{info.name}, {precision}{' (TF32 matmuls)' if tf32 else ''}"
    kwargs = dict(recompute=args.r, gelu_fusion=args.ge, device=args.device, precision=precision, tf32=tf32)
    model = GPT2.from_checkpoint(args.e, **kwargs) if args.e.endswith(".bin") else GPT2.from_descriptor(args.e, **kwargs)
    c = model.config
    print(f"model {args.e}: {c.num_parameters:,} parameters, L={c.num_layers} C={c.channels}, B={args.b} T={args.t}, "
          f"-r {args.r}, device {where}: one training step after one warm-up step")
    calls, wall = profile(model, args.b, args.t)
    report(calls, wall)


if __name__ == "__main__":
    run_main(main)
