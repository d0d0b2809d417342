"""The fp32 path's three matmul variants (--matmul) timed against each other, with a bar chart.

    python dev/cuda/matmul_variants.py                          # d12 random init, -b 4 -t 256, matmul_variants.png
    python dev/cuda/matmul_variants.py -e gpt2_124M.bin -f 0 -o variants.png

cublas: cuBLAS SGEMM for every linear layer (TF32 tensor cores with -f 1, the default, as llm.c);
custom: our tiled shared-memory SGEMM (kernels_cu/matmul.cu) for the forward matmuls, cuBLAS for the backward;
fp16fc: the MLP's first linear (fcw) with fp16 operands and f32 accumulation through cublasGemmEx.
Each variant gets a fresh model, one warm-up step (kernel compilation, cuBLASLt/cuBLAS set-up), then the median
of --steps forward passes and of --steps whole training steps, timed with CUDA events. It also prints the first
step's loss of each variant: they agree to about 1e-3 (fp16 operands) or better, so a broken variant shows.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from llmc_py import LlmcError, cuda, run_main  # noqa: E402
from llmc_py.gpt2 import GPT2  # noqa: E402

VARIANTS = ("cublas", "custom", "fp16fc")


def time_variant(variant, args, inputs, targets):
    """(first loss, median forward ms, median step ms) of one variant."""
    kwargs = dict(device="cuda", precision="fp32", matmul=variant, tf32=bool(args.f), recompute=1)
    model = GPT2.from_checkpoint(args.e, **kwargs) if args.e.endswith(".bin") else GPT2.from_descriptor(args.e, **kwargs)
    model.allocate(args.b, args.t)
    timer = cuda.StepTimer(True)
    first_loss, forward_ms, step_ms = None, [], []
    for step in range(args.steps + 1):
        timer.start()
        model.forward(inputs)
        forward = timer.stop()
        timer.start()
        model.forward(inputs)
        model.backward(inputs, targets, 1, 0)
        norm = np.sqrt(model.grad_norm_squared())
        model.update(1e-4, 0.0, 1.0 / norm if norm > 1.0 else 1.0, step + 1)
        whole = timer.stop()
        if step == 0:
            first_loss = model.mean_loss
        else:
            forward_ms.append(forward)
            step_ms.append(whole)
    del model
    return first_loss, float(np.median(forward_ms)), float(np.median(step_ms))


def draw(results, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    forward = [results[n][1] for n in names]
    step = [results[n][2] for n in names]
    bars_f = ax.bar(x - 0.2, forward, 0.4, label="forward")
    bars_s = ax.bar(x + 0.2, step, 0.4, label="training step")
    ax.bar_label(bars_f, fmt="%.1f")
    ax.bar_label(bars_s, fmt="%.1f")
    ax.set_xticks(x, [f"--matmul {n}" for n in names])
    ax.set_ylabel("ms (median)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-e", default="d12", help="model .bin (fp32 or bf16) or descriptor; default d12 random init")
    p.add_argument("-b", type=int, default=4)
    p.add_argument("-t", type=int, default=256)
    p.add_argument("-f", type=int, default=1, help="TF32 for the cuBLAS fp32 matmuls (default 1)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("-o", default="matmul_variants.png", help="the bar chart")
    args = p.parse_args()
    if args.steps < 1:
        raise LlmcError(f"--steps {args.steps}: expected at least 1")
    info = cuda.init_device(0, "matmul_variants.py", hint="")
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50257, (args.b, args.t + 1)).astype(np.int32)
    inputs, targets = tokens[:, :-1].copy(), tokens[:, 1:].copy()
    results = {}
    print(f"{info.name}, fp32{' (TF32)' if args.f else ''}, model {args.e}, B={args.b} T={args.t}, "
          f"median of {args.steps}")
    print(f"{'variant':<8} {'first loss':>11} {'forward ms':>11} {'step ms':>9} {'tok/s':>9}")
    for variant in VARIANTS:
        loss, forward, step = time_variant(variant, args, inputs, targets)
        results[variant] = (loss, forward, step)
        print(f"{variant:<8} {loss:>11.6f} {forward:>11.2f} {step:>9.2f} {args.b * args.t / step * 1000:>9.0f}")
    draw(results, args.o, f"fp32 matmul variants, {info.name}, B={args.b} T={args.t}")
    print(f"wrote {args.o}")


if __name__ == "__main__":
    run_main(main)
