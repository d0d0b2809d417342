"""Training-step benchmark: ms/step, tok/s and MFU for a model at chosen B and T.

    python dev/bench.py --device cpu -e gpt2_d12.bin -b 4 -t 64 --steps 5

Times whole steps (forward, backward, grad norm, AdamW) on random tokens after one warm-up step, the
way train_gpt2cu.py times them, and prints the figures; it asserts nothing.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmc_py import LlmcError, run_main  # noqa: E402
from llmc_py.gpt2 import GPT2  # noqa: E402
from llmc_py.mfu import estimate_mfu, format_mfu  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("-e", default="gpt2_d12.bin", help="model .bin or descriptor (d6, d12, ...)")
    p.add_argument("-b", type=int, default=4)
    p.add_argument("-t", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    if args.device == "cuda":
        raise LlmcError("--device cuda: the CUDA backend is not available in this version")
    model = GPT2.from_checkpoint(args.e) if args.e.endswith(".bin") else GPT2.from_descriptor(args.e)
    c = model.config
    model.allocate(args.b, args.t)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, c.vocab_size, (args.b, args.t + 1)).astype(np.int32)
    inputs, targets = tokens[:, :-1].copy(), tokens[:, 1:].copy()
    times = []
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        model.forward(inputs)
        model.backward(inputs, targets, 1, 0)
        norm = np.sqrt(model.grad_norm_squared())
        model.update(1e-4, 0.0, 1.0 / norm if norm > 1.0 else 1.0, step + 1)
        times.append(time.perf_counter() - t0)
    dt = float(np.median(times[1:]))
    tokens_per_step = args.b * args.t
    mfu = estimate_mfu(c.num_parameters, c.num_layers, c.channels, args.t, tokens_per_step, dt, -1.0)
    print(f"model {args.e}: {c.num_parameters:,} parameters, B={args.b} T={args.t}, device {args.device}")
    print(f"median of {args.steps} steps: {dt * 1000:.1f} ms/step | {tokens_per_step / dt:.0f} tok/s | {format_mfu(mfu)}")


if __name__ == "__main__":
    run_main(main)
