"""PyTorch reference GPT-2: writes the files that the Python trainer and test_gpt2cu.py start from.

It writes gpt2_{S}.bin (fp32), gpt2_{S}_bf16.bin, gpt2_{S}_debug_state.bin and gpt2_tokenizer.bin in the
current directory. Random-init models (--model d12 ...) draw their weights from torch's generator in
PyTorch's module-init order, which llmc_py.rand reproduces bit for bit, so `-e d12` and this file agree.
The debug state also carries the losses of llm.c's 10 reference training steps on the debug batch (in
header slots llm.c's reader ignores), so test_gpt2cu.py can check a random-init model without a
hard-coded list. This file is the only place outside the tests and dev/bench_torch.py (the PyTorch peer of the
benchmarks) that uses torch.
"""
import argparse
import copy
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from llmc_py import LlmcError, run_main
from llmc_py.checkpoint import MODEL_VERSION_BF16, MODEL_VERSION_FP32, write_debug_state, write_model
from llmc_py.config import GPT2Config, PADDED_VOCAB_SIZE, VOCAB_SIZE, config_from_descriptor
from llmc_py.dataloader import read_shard
from llmc_py.tokenizer import get_gpt2_encoding, gpt2_token_bytes, write_tokenizer

PRETRAINED = {"gpt2": "124M", "gpt2-medium": "355M", "gpt2-large": "774M", "gpt2-xl": "1558M"}
PRETRAINED_SHAPES = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024),
                     "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600)}
RANDOM_INIT = ("d12", "d24", "d36", "d48")
# llm.c's per-layer tensors (index in its file order) -> the parameter of each Block
LAYER_PARAM_NAMES = {2: "ln_1.weight", 3: "ln_1.bias", 4: "attn.c_attn.weight", 5: "attn.c_attn.bias",
                     6: "attn.c_proj.weight", 7: "attn.c_proj.bias", 8: "ln_2.weight", 9: "ln_2.bias",
                     10: "mlp.c_fc.weight", 11: "mlp.c_fc.bias", 12: "mlp.c_proj.weight", 13: "mlp.c_proj.bias"}


# ----------------------------------------------------------------------------
# the model: nn.Linear layouts match llm.c's tensors one to one

class CausalSelfAttention(nn.Module):
    def __init__(self, config, flash):
        super().__init__()
        self.n_head, self.flash = config.num_heads, flash
        self.c_attn = nn.Linear(config.channels, 3 * config.channels)
        self.c_proj = nn.Linear(config.channels, config.channels)
        self.c_proj.residual_scale = True
        T = config.max_seq_len
        self.register_buffer("bias", torch.tril(torch.ones(T, T)).view(1, 1, T, T), persistent=False)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.channels, 4 * config.channels)
        self.c_proj = nn.Linear(4 * config.channels, config.channels)
        self.c_proj.residual_scale = True

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config, flash):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.channels)
        self.attn = CausalSelfAttention(config, flash)
        self.ln_2 = nn.LayerNorm(config.channels)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config, flash=False, init_rng=None):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.channels),
            wpe=nn.Embedding(config.max_seq_len, config.channels),
            h=nn.ModuleList([Block(config, flash) for _ in range(config.num_layers)]),
            ln_f=nn.LayerNorm(config.channels)))
        self.lm_head = nn.Linear(config.channels, config.vocab_size, bias=False)
        self.lm_head.skip_init = True
        self.transformer.wte.weight = self.lm_head.weight
        if init_rng is not None:
            self.apply(lambda module: self._init_weights(module, init_rng))

    def _init_weights(self, module, rng):
        # PyTorch visits modules in registration order: wte, wpe, then per layer c_attn, attn c_proj,
        # c_fc, mlp c_proj. llmc_py.rand.gpt2_random_init draws in exactly this order.
        if isinstance(module, nn.Linear):
            if getattr(module, "skip_init", False):
                return
            std = 0.02 / math.sqrt(2 * self.config.num_layers) if getattr(module, "residual_scale", False) else 0.02
            torch.nn.init.normal_(module.weight, mean=0.0, std=std, generator=rng)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02, generator=rng)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T, device=idx.device))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def llmc_tensors(self):
        """The 16 tensors in llm.c's order and shapes (per-layer tensors stacked on a leading L axis)."""
        h, t = self.transformer.h, self.transformer

        def stack(get):
            return torch.stack([get(block) for block in h])
        return [t.wte.weight, t.wpe.weight,
                stack(lambda b: b.ln_1.weight), stack(lambda b: b.ln_1.bias),
                stack(lambda b: b.attn.c_attn.weight), stack(lambda b: b.attn.c_attn.bias),
                stack(lambda b: b.attn.c_proj.weight), stack(lambda b: b.attn.c_proj.bias),
                stack(lambda b: b.ln_2.weight), stack(lambda b: b.ln_2.bias),
                stack(lambda b: b.mlp.c_fc.weight), stack(lambda b: b.mlp.c_fc.bias),
                stack(lambda b: b.mlp.c_proj.weight), stack(lambda b: b.mlp.c_proj.bias),
                t.ln_f.weight, t.ln_f.bias]

    def llmc_config(self):
        c = self.config
        return GPT2Config(c.max_seq_len, c.vocab_size, PADDED_VOCAB_SIZE, c.num_layers, c.num_heads, c.channels)


def load_llmc(model, config, params):
    """The inverse of flatten_llmc: copies the flat parameters of an llm.c model file (`config` from its header,
    any float dtype) into the model's tensors; wte gives the model as many of its Vp rows as it has."""
    t = model.transformer
    V = t.wte.weight.shape[0]
    single = {1: t.wpe.weight, 14: t.ln_f.weight, 15: t.ln_f.bias}
    flat = np.asarray(params, dtype=np.float32)
    with torch.no_grad():
        for i, (offset, shape) in enumerate(zip(config.param_offsets(), config.param_shapes())):
            values = torch.from_numpy(flat[offset:offset + int(np.prod(shape))].reshape(shape))
            if i == 0:
                t.wte.weight.copy_(values[:V])
            elif i in LAYER_PARAM_NAMES:
                for block, layer_values in zip(t.h, values):
                    block.get_parameter(LAYER_PARAM_NAMES[i]).copy_(layer_values)
            else:
                single[i].copy_(values)


def flatten_llmc(model, grads=False):
    """Flat f32 array in llm.c's layout, wte padded with zero rows to Vp (params, or their .grad)."""
    with torch.no_grad():
        parts = []
        for i, tensor in enumerate(model.llmc_tensors()):
            if grads:
                tensor = _stacked_grad(model, i) if tensor.grad is None else tensor.grad
            arr = tensor.detach().float().cpu().numpy()
            if i == 0:
                arr = np.concatenate([arr, np.zeros((PADDED_VOCAB_SIZE - arr.shape[0], arr.shape[1]), np.float32)])
            parts.append(arr.reshape(-1))
        return np.concatenate(parts)


def _stacked_grad(model, index):
    # stacked tensors are new tensors: collect each layer's parameter .grad instead
    name = LAYER_PARAM_NAMES[index]
    return torch.stack([block.get_parameter(name).grad for block in model.transformer.h])


# ----------------------------------------------------------------------------
# building models

def random_init_model(descriptor, flash):
    c = config_from_descriptor(descriptor)
    config = GPT2Config(c.max_seq_len, VOCAB_SIZE, VOCAB_SIZE, c.num_layers, c.num_heads, c.channels)
    return GPT(config, flash, init_rng=torch.Generator().manual_seed(42))


def pretrained_model(name, flash):
    try:
        from transformers import GPT2LMHeadModel
        hf = GPT2LMHeadModel.from_pretrained(name)
    except Exception as e:  # no transformers, no network, no cache: all end the same way
        raise LlmcError(f"--model {name}: cannot load pretrained weights ({type(e).__name__}); they need the "
                        f"transformers package and network access to Hugging Face, or use a random-init "
                        f"model such as --model d12") from None
    L, NH, C = PRETRAINED_SHAPES[name]
    model = GPT(GPT2Config(1024, VOCAB_SIZE, VOCAB_SIZE, L, NH, C), flash)
    sd, sd_hf = model.state_dict(), hf.state_dict()
    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    with torch.no_grad():
        for key in sd:
            if key.endswith(".attn.bias"):
                continue
            src = sd_hf[key]
            sd[key].copy_(src.t() if key.endswith(transposed) else src)
    return model


# ----------------------------------------------------------------------------
# llm.c's reference steps: the expected losses of test_gpt2cu

def reference_losses(model, x, y, steps=10):
    """Losses of llm.c's debug-state run: AdamW lr 1e-4, betas (0.9, 0.95), eps 1e-8, no weight decay,
    grad clip 1.0, the same batch every step, fp32. Runs on a copy; `model` is left as it was."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
                                  fused=True)
    losses = []
    for _ in range(steps):
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses


def write_tensors(model, x, y, size_name):
    """Model files (fp32 + bf16) and the debug state of one forward/backward on (x, y)."""
    config = model.llmc_config()
    params = flatten_llmc(model)
    write_model(f"gpt2_{size_name}.bin", config, params, MODEL_VERSION_FP32)
    write_model(f"gpt2_{size_name}_bf16.bin", config, params, MODEL_VERSION_BF16)
    model.zero_grad(set_to_none=True)
    logits, loss = model(x, y)
    loss.backward()
    grads = flatten_llmc(model, grads=True)
    model.zero_grad(set_to_none=True)
    losses = reference_losses(model, x, y)
    write_debug_state(f"gpt2_{size_name}_debug_state.bin", x.cpu().numpy(), y.cpu().numpy(),
                      logits.detach().float().cpu().numpy(), loss.item(), grads, losses)
    print(f"wrote gpt2_{size_name}.bin, gpt2_{size_name}_bf16.bin, gpt2_{size_name}_debug_state.bin")
    print("reference losses: " + ", ".join(f"{l:.6f}" for l in losses))


# ----------------------------------------------------------------------------
# data: llm.c's train_gpt2.py loader is sequential, not shuffled

class DataLoaderLite:
    def __init__(self, pattern, B, T):
        import glob
        self.files = sorted(glob.glob(pattern))
        if not self.files:
            raise LlmcError(f"--input_bin {pattern}: no files match")
        self.B, self.T = B, T
        self.reset()

    def reset(self):
        self.shard, self.pos = 0, 0
        self.tokens = self._load(self.files[0])

    def _load(self, path):
        tokens = read_shard(path)
        if tokens.size < self.B * self.T + 1:
            raise LlmcError(f"{path}: expected at least B*T+1 = {self.B * self.T + 1} tokens, found {tokens.size}")
        return tokens

    def next_batch(self):
        B, T = self.B, self.T
        if self.pos + B * T + 1 > self.tokens.size:
            self.shard = (self.shard + 1) % len(self.files)
            self.tokens, self.pos = self._load(self.files[self.shard]), 0
        buf = torch.from_numpy(self.tokens[self.pos:self.pos + B * T + 1].astype(np.int64))
        self.pos += B * T
        return buf[:-1].view(B, T), buf[1:].view(B, T)


# ----------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input_bin", default="dev/data/tinyshakespeare/tiny_shakespeare_val.bin")
    p.add_argument("--input_val_bin", default="")
    p.add_argument("--output_dir", default="")
    p.add_argument("--model", default="gpt2", choices=list(PRETRAINED) + list(RANDOM_INIT))
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--sequence_length", type=int, default=64)
    p.add_argument("--total_batch_size", type=int, default=256)
    p.add_argument("--num_iterations", type=int, default=10)
    p.add_argument("--inference_only", type=int, default=0)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--warmup_iters", type=int, default=0)
    p.add_argument("--learning_rate_decay_frac", type=float, default=1.0)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--grad_clip", type=float, default=1.0)
    p.add_argument("--val_loss_every", type=int, default=0)
    p.add_argument("--val_max_steps", type=int, default=20)
    p.add_argument("--sample_every", type=int, default=0)
    p.add_argument("--overfit_single_batch", type=int, default=1)
    p.add_argument("--tensorcores", type=int, default=0)
    p.add_argument("--device", default="")
    p.add_argument("--compile", type=int, default=0)
    p.add_argument("--flash", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--write_tensors", type=int, default=1)
    args = p.parse_args(argv)
    B, T = args.batch_size, args.sequence_length
    if not 1 <= T <= 1024:
        raise LlmcError(f"--sequence_length {T}: expected 1..1024")
    if args.total_batch_size % (B * T) != 0:
        raise LlmcError(f"--total_batch_size {args.total_batch_size}: expected a multiple of B*T = {B * T}")
    grad_accum = args.total_batch_size // (B * T)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"using device: {device}")
    torch.manual_seed(42)
    if args.tensorcores:
        torch.set_float32_matmul_precision("high")

    enc = get_gpt2_encoding()
    write_tokenizer("gpt2_tokenizer.bin", gpt2_token_bytes(enc), enc.eot_token)
    print("wrote gpt2_tokenizer.bin")

    if args.model in RANDOM_INIT:
        model, size_name = random_init_model(args.model, bool(args.flash)), args.model
    else:
        model, size_name = pretrained_model(args.model, bool(args.flash)), PRETRAINED[args.model]
    model.to(device)
    if args.inference_only:
        return 0

    train_loader = DataLoaderLite(args.input_bin, B, T)
    val_loader = DataLoaderLite(args.input_val_bin, B, T) if args.input_val_bin else None
    if args.write_tensors:
        x, y = train_loader.next_batch()
        write_tensors(model, x.to(device), y.to(device), size_name)
        train_loader.reset()
    train(model, args, train_loader, val_loader, grad_accum, device)
    return 0


def train(model, args, train_loader, val_loader, grad_accum, device):
    """The demonstration training run of llm.c's train_gpt2.py (warmup + cosine, AdamW, clipping)."""
    if args.num_iterations <= 0:
        return
    autocast_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    if args.compile:
        model = torch.compile(model)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.learning_rate, betas=(0.9, 0.95), eps=1e-8, fused=True)
    min_lr = args.learning_rate * args.learning_rate_decay_frac
    log = os.path.join(args.output_dir, "main.log") if args.output_dir else None
    if log:
        os.makedirs(args.output_dir, exist_ok=True)
        open(log, "w").close()

    def lr_at(it):
        if it < args.warmup_iters:
            return args.learning_rate * (it + 1) / args.warmup_iters
        if it > args.num_iterations:
            return min_lr
        ratio = (it - args.warmup_iters) / max(1, args.num_iterations - args.warmup_iters)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (args.learning_rate - min_lr)

    tokens_per_step = grad_accum * train_loader.B * train_loader.T
    for step in range(args.num_iterations + 1):
        last = step == args.num_iterations
        if val_loader is not None and args.val_loss_every > 0 and (step % args.val_loss_every == 0 or last):
            model.eval()
            val_loader.reset()
            with torch.no_grad():
                val_loss = sum(model(*(t.to(device) for t in val_loader.next_batch()))[1].item()
                               for _ in range(args.val_max_steps)) / args.val_max_steps
            print(f"val loss {val_loss}")
            if log:
                with open(log, "a") as f:
                    f.write(f"s:{step} tel:{val_loss:f}\n")
        if last:
            break
        model.train()
        t0 = time.time()
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for _ in range(grad_accum):
            if args.overfit_single_batch:
                train_loader.reset()
            x, y = (t.to(device) for t in train_loader.next_batch())
            with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=autocast_dtype,
                                enabled=autocast_dtype != torch.float32):
                _, loss = model(x, y)
            (loss / grad_accum).backward()
            loss_sum += loss.item() / grad_accum
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        ms = (time.time() - t0) * 1000
        print(f"step {step + 1:4d}/{args.num_iterations} | train loss {loss_sum:.6f} | norm {norm:.4f} | "
              f"lr {lr:.2e} | ({ms:.2f} ms | {tokens_per_step / ms * 1000:.0f} tok/s)")
        if log:
            with open(log, "a") as f:
                f.write(f"s:{step} trl:{loss_sum:f}\n")


if __name__ == "__main__":
    run_main(main)
