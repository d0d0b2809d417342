"""PyTorch's GPT-2 training step on an llm.c model file and data shard: the PyTorch peer of dev/bench_peers.py.

    python dev/bench_torch.py -e gpt2_d12_bf16.bin -i dev/data/tinyshakespeare/tiny_shakespeare_train.bin -b 64 -t 1024

The model is train_gpt2.py's GPT-2 holding the file's weights, trained the way build-nanogpt trains it: the
vocabulary padded to Vp (50304, a multiple of 128), fp32 parameters under bf16 autocast, torch.compile, causal
scaled_dot_product_attention with only the flash backend enabled, fused AdamW (betas 0.9/0.95, eps 1e-8, weight
decay 0.1 on the matrices only), TF32 for the matmuls left in fp32, gradient clipping at 1.0. Steps are timed as
dev/bench.py times ours (CUDA events around the batch, forward, backward, clip and update; the steps after
--warmup count; the first one carries the compilation) and written in its JSON form. Its own memory figure is
the caching allocator's peak reservation. `--device cpu` (no compilation, no autocast) serves the tests.
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "dev"))

from bench import bench_result, write_json  # noqa: E402
from llmc_py import LlmcError, run_main  # noqa: E402
from llmc_py.checkpoint import read_model  # noqa: E402
from llmc_py.config import GPT2Config  # noqa: E402
from llmc_py.dataloader import DataLoader  # noqa: E402

WEIGHT_DECAY, GRAD_CLIP, LEARNING_RATE = 0.1, 1.0, 1e-4


def build_model(path, device):
    """train_gpt2.py's GPT with the weights of the llm.c model file at `path`, its vocabulary padded to Vp."""
    from train_gpt2 import GPT, load_llmc
    config, params, _ = read_model(path)
    padded = GPT2Config(config.max_seq_len, config.padded_vocab_size, config.padded_vocab_size, config.num_layers,
                        config.num_heads, config.channels)
    model = GPT(padded, flash=True)
    load_llmc(model, config, params)
    return config, model.to(device)


def make_optimizer(model, device):
    import torch
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=LEARNING_RATE, betas=(0.9, 0.95), eps=1e-8, fused=device == "cuda")


class Timer:
    """ms of one step: CUDA events on the GPU (end waits for the GPU), the wall clock on the CPU."""

    def __init__(self, torch, device):
        self.torch, self.gpu = torch, device == "cuda"
        if self.gpu:
            self.begin, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def start(self):
        if self.gpu:
            self.begin.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self):
        if not self.gpu:
            return (time.perf_counter() - self.t0) * 1000.0
        self.end.record()
        self.end.synchronize()
        return float(self.begin.elapsed_time(self.end))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("-e", default="gpt2_d12_bf16.bin", help="llm.c model file (fp32 or bf16)")
    p.add_argument("-i", default="dev/data/tinyshakespeare/tiny_shakespeare_train.bin", help="data shard pattern")
    p.add_argument("-b", type=int, default=4)
    p.add_argument("-t", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=9, help="untimed steps (the first compiles)")
    p.add_argument("--steps", type=int, default=21)
    p.add_argument("--compile", type=int, default=1, choices=[0, 1], help="torch.compile (cuda only)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    if args.steps < 1 or args.warmup < 0:
        raise LlmcError(f"--warmup {args.warmup} --steps {args.steps}: expected warmup >= 0 and steps >= 1")
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        raise LlmcError("--device cuda: torch sees no CUDA device")
    gpu = args.device == "cuda"
    torch.set_float32_matmul_precision("high")
    if gpu:  # flash attention or nothing: no silent fall-back to another kernel
        torch.backends.cuda.enable_flash_sdp(True)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_math_sdp(False)
        torch.backends.cuda.enable_cudnn_sdp(False)
    config, model = build_model(args.e, args.device)
    if args.t > config.max_seq_len:
        raise LlmcError(f"-t {args.t}: the model's max_seq_len is {config.max_seq_len}")
    optimizer = make_optimizer(model, args.device)
    compiled = torch.compile(model) if gpu and args.compile else model
    loader = DataLoader(args.i, args.b, args.t)
    name = torch.cuda.get_device_name() if gpu else "cpu"
    recipe = "torch.compile, bf16 autocast, flash SDPA, fused AdamW" if gpu else "fp32, AdamW"
    if gpu and not args.compile:
        recipe = recipe.replace("torch.compile", "eager")
    print(f"model {args.e}: {config.num_parameters:,} parameters (vocab padded to {config.padded_vocab_size}), "
          f"B={args.b} T={args.t}, device {name}, torch {torch.__version__}: {recipe}", flush=True)
    timer = Timer(torch, args.device)
    times, first_step_s = [], 0.0
    model.train()
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        timer.start()
        inputs, targets = loader.next_batch()
        x = torch.from_numpy(inputs).to(args.device, dtype=torch.long, non_blocking=True)
        y = torch.from_numpy(targets).to(args.device, dtype=torch.long, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=args.device, dtype=torch.bfloat16, enabled=gpu):
            _, loss = compiled(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        times.append(timer.stop())
        if step == 0:
            first_step_s = time.perf_counter() - t0
            print(f"first step (compilation included) in {first_step_s:.1f} s, loss {loss.item():.4f}", flush=True)
    timed = times[args.warmup:]
    memory = torch.cuda.max_memory_reserved() >> 20 if gpu else None
    dt = float(np.median(timed))
    print(f"median of {args.steps} steps: {dt:.1f} ms/step | {args.b * args.t / dt * 1000:.0f} tok/s"
          + (f" | {memory} MiB reserved at peak by torch" if gpu else ""))
    if args.json:
        write_json(args.json, bench_result(
            "pytorch", name, args.b, args.t, timed, memory, "peak reserved by torch's caching allocator",
            torch=torch.__version__, compile=bool(compiled is not model), first_step_s=first_step_s,
            model=args.e, data=args.i, warmup=args.warmup))


if __name__ == "__main__":
    run_main(main)
