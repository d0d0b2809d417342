"""Training-step benchmark: ms/step, tok/s and MFU for a model at chosen B and T.

    python dev/bench.py --device cpu -e gpt2_d12.bin -b 4 -t 64 --steps 5
    python dev/bench.py --device cuda -e gpt2_124M_bf16.bin -b 4 -t 1024            # bf16
    python dev/bench.py --device cuda --precision fp32 -e gpt2_124M.bin -b 4 -t 1024 # fp32, TF32 (-f 1)
    python dev/bench.py --device cuda -e gpt2_124M_bf16.bin -b 64 -t 1024 --attention llmc  # without cuDNN

Times whole steps (forward, backward, grad norm, AdamW) on random tokens after one warm-up step, the
way train_gpt2cu.py times them (CUDA events on the GPU), and prints the figures; it asserts nothing.
MFU uses the peak of spec 9.9's table for this GPU's name ("MFU n/a" for GPUs missing from it).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmc_py import LlmcError, cuda, run_main  # noqa: E402
from llmc_py.attention import ATTENTION_CHOICES  # noqa: E402
from llmc_py.gpt2 import GPT2  # noqa: E402
from llmc_py.mfu import estimate_mfu, format_mfu, get_flops_promised  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default=None, choices=["bf16", "fp32"], help="default bf16 on cuda, fp32 on cpu")
    p.add_argument("--matmul", default="cublas", choices=["cublas", "custom", "fp16fc"], help="fp32 on cuda only")
    p.add_argument("-f", type=int, default=1, help="TF32 for the fp32 matmuls on the GPU (default 1)")
    p.add_argument("--attention", default="auto", choices=ATTENTION_CHOICES,
                   help="cuDNN flash attention or llm.c's kernels (auto: cuDNN for bf16 where it loads)")
    p.add_argument("-e", default="gpt2_d12.bin", help="model .bin or descriptor (d6, d12, ...)")
    p.add_argument("-b", type=int, default=4)
    p.add_argument("-t", type=int, default=64)
    p.add_argument("-r", type=int, default=1, choices=[0, 1, 2], help="recompute")
    p.add_argument("-ge", type=int, default=0, choices=[0, 1, 2], help="GELU fusion")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    if args.steps < 1:
        raise LlmcError(f"--steps {args.steps}: expected at least 1")
    name, peak = "cpu (NumPy reference)", -1.0
    if args.device == "cuda":
        info = cuda.init_device(0)
        name, peak = info.name, get_flops_promised(info.name, precision)
    kwargs = dict(device=args.device, precision=precision, matmul=args.matmul, recompute=args.r,
                  gelu_fusion=args.ge, tf32=bool(args.f), attention=args.attention)
    model = GPT2.from_checkpoint(args.e, **kwargs) if args.e.endswith(".bin") else GPT2.from_descriptor(args.e, **kwargs)
    c = model.config
    model.allocate(args.b, args.t)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, c.vocab_size, (args.b, args.t + 1)).astype(np.int32)
    inputs, targets = tokens[:, :-1].copy(), tokens[:, 1:].copy()
    timer = cuda.StepTimer(model.gpu)
    times = []
    for step in range(args.steps + 1):
        timer.start()
        model.forward(inputs)
        model.backward(inputs, targets, 1, 0)
        norm = np.sqrt(model.grad_norm_squared())
        model.update(1e-4, 0.0, 1.0 / norm if norm > 1.0 else 1.0, step + 1)
        times.append(timer.stop() / 1000.0)
    dt = float(np.median(times[1:]))
    tokens_per_step = args.b * args.t
    mfu = estimate_mfu(c.num_parameters, c.num_layers, c.channels, args.t, tokens_per_step, dt, peak)
    extra = f", --matmul {args.matmul}" if args.matmul != "cublas" else ""
    print(f"model {args.e}: {c.num_parameters:,} parameters, B={args.b} T={args.t}, device {name}, "
          f"{precision}{extra}, -r {args.r}")
    print(model.attention_line())
    memory = f" | {cuda.memory_usage()[0]} MiB device memory used" if model.gpu else ""
    print(f"median of {args.steps} steps: {dt * 1000:.1f} ms/step | {tokens_per_step / dt:.0f} tok/s | {format_mfu(mfu)}"
          f"{memory}")


if __name__ == "__main__":
    run_main(main)
