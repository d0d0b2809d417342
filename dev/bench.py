"""Training-step benchmark: ms/step, tok/s and MFU for a model at chosen B and T.

    python dev/bench.py --device cpu -e gpt2_d12.bin -b 4 -t 64 --steps 5
    python dev/bench.py --device cuda -e gpt2_124M_bf16.bin -b 4 -t 1024            # bf16
    python dev/bench.py --device cuda --precision fp32 -e gpt2_124M.bin -b 4 -t 1024 # fp32, TF32 (-f 1)
    python dev/bench.py --device cuda -e gpt2_124M_bf16.bin -b 64 -t 1024 --attention llmc  # without cuDNN

Times whole steps (forward, backward, grad norm, AdamW) after --warmup untimed ones, the way train_gpt2cu.py
runs and times them (llmc_py.step's TrainStep, CUDA events on the GPU, the batch drawn inside the step; with
--cuda-graph 1, the default on the GPU, the first step runs eagerly, the second is captured as CUDA graphs and
every later one replays them, so at least those two are untimed), on random tokens or, with -i, on a data shard
read as train_gpt2cu.py reads it, and prints the figures; it asserts nothing. MFU uses the peak of spec 9.9's
table for this GPU's name ("MFU n/a" for GPUs missing from it). --json writes the figures in the form
dev/bench_peers.py reads from every program it compares (bench_result below; dev/bench_torch.py writes it too).
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmc_py import LlmcError, cuda, run_main  # noqa: E402
from llmc_py.dataloader import DataLoader  # noqa: E402
from llmc_py.fileio import atomic_write  # noqa: E402
from llmc_py.attention import ATTENTION_CHOICES  # noqa: E402
from llmc_py.gpt2 import GPT2  # noqa: E402
from llmc_py.mfu import estimate_mfu, format_mfu, get_flops_promised  # noqa: E402
from llmc_py.step import TrainStep  # noqa: E402


def bench_result(program, device, B, T, step_ms, memory_mib, memory_what, **details):
    """The figures of one run as dev/bench_peers.py reads them: the timed steps' ms, their median and tok/s, the
    program's own device-memory figure (MiB, and what it measures), and free-form details of the setup."""
    median = float(np.median(step_ms))
    return dict(program=program, device=device, B=B, T=T, steps=len(step_ms), step_ms=[float(t) for t in step_ms],
                median_ms=median, tok_per_s=B * T / (median / 1000.0), memory_mib=memory_mib,
                memory_what=memory_what, details=details)


def write_json(path, value):
    with atomic_write(path) as f:
        f.write((json.dumps(value, indent=1) + "\n").encode())


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
    p.add_argument("-i", default=None, help="data shard pattern (llm.c's -i); default: random tokens")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    p.add_argument("--cuda-graph", type=int, default=None, choices=[0, 1],
                   help="replay the step as CUDA graphs (default 1 on cuda; cpu has none)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    cuda_graph = args.device == "cuda" if args.cuda_graph is None else bool(args.cuda_graph)
    if args.steps < 1:
        raise LlmcError(f"--steps {args.steps}: expected at least 1")
    if args.warmup < 0:
        raise LlmcError(f"--warmup {args.warmup}: expected 0 or more")
    name, peak = "cpu (NumPy reference)", -1.0
    if args.device == "cuda":
        info = cuda.init_device(0)
        name, peak = info.name, get_flops_promised(info.name, precision)
    kwargs = dict(device=args.device, precision=precision, matmul=args.matmul, recompute=args.r,
                  gelu_fusion=args.ge, tf32=bool(args.f), attention=args.attention)
    model = GPT2.from_checkpoint(args.e, **kwargs) if args.e.endswith(".bin") else GPT2.from_descriptor(args.e, **kwargs)
    c = model.config
    model.allocate(args.b, args.t)
    loader = DataLoader(args.i, args.b, args.t) if args.i else None
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, c.vocab_size, (args.b, args.t + 1)).astype(np.int32)
    inputs, targets = tokens[:, :-1].copy(), tokens[:, 1:].copy()
    train_step = TrainStep(model, 1, cuda_graph=cuda_graph)
    timer = cuda.StepTimer(model.gpu)
    times = []
    warmup = max(args.warmup, 2 if cuda_graph else 0)  # with graphs: an eager step, then the captured one
    for step in range(warmup + args.steps):
        timer.start()
        if loader is not None:
            inputs, targets = loader.next_batch()
        train_step.micro_step(inputs, targets, 0)
        train_step.readback()
        train_step.update(1e-4, 0.0, step + 1)
        times.append(timer.stop() / 1000.0)
    dt = float(np.median(times[warmup:]))
    tokens_per_step = args.b * args.t
    mfu = estimate_mfu(c.num_parameters, c.num_layers, c.channels, args.t, tokens_per_step, dt, peak)
    extra = f", --matmul {args.matmul}" if args.matmul != "cublas" else ""
    print(f"model {args.e}: {c.num_parameters:,} parameters, B={args.b} T={args.t}, device {name}, "
          f"{precision}{extra}, -r {args.r}, CUDA graph {'on' if cuda_graph else 'off'}")
    print(model.attention_line())
    used = cuda.memory_usage()[0] if model.gpu else None
    memory = f" | {used} MiB device memory used" if model.gpu else ""
    print(f"median of {args.steps} steps: {dt * 1000:.1f} ms/step | {tokens_per_step / dt:.0f} tok/s | {format_mfu(mfu)}"
          f"{memory}")
    if args.json:
        write_json(args.json, bench_result(
            "llmc-py", name, args.b, args.t, [t * 1000 for t in times[warmup:]], used,
            "device memory in use after the steps (cudaMemGetInfo)", precision=precision, recompute=args.r,
            gelu_fusion=args.ge, model=args.e, data=args.i or "random tokens", warmup=warmup, cuda_graph=cuda_graph))


if __name__ == "__main__":
    run_main(main)
