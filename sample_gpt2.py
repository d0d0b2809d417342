"""Generates text from a GPT-2 model file: a prompt, top-k and temperature, on the CPU or the GPU.

    python sample_gpt2.py -e gpt2_d12.bin --prompt "First Citizen:" --device cpu
    python sample_gpt2.py -e log_gpt2_124M/model_00018865.bin --prompt-file prompt.txt -n 4 -g 128 --top-k 50

Any model .bin (version 3 fp32 or 5 bf16, written by llm.c or by this project) and llm.c's gpt2_tokenizer.bin,
which also encodes the prompt (no download). Each sample is printed as it is generated, token by token, with
llm.c's safe printing. The tokens come from the training loop's sampler (llmc_py.sampler): the prompt is EOT
followed by the text, and with no --top-k and temperature 1 the draws are llm.c's, so with the default seed
1337 and -g genT-1 the first sample is the one train_gpt2cu.py prints for the same weights.
The forward is the training forward over buffers allocated once for batch 1 and the longest prefix; on the CPU
each forward covers the prefix exactly, on the GPU a multiple of 256 positions, as llm.c's sampler.
"""
import argparse

from llmc_py import LlmcError, cuda, run_main
from llmc_py.gpt2 import GPT2
from llmc_py.sampler import SAMPLE_RNG_SEED, Sampler, check_fits, generate, prompt_tokens
from llmc_py.tokenizer import Tokenizer, print_token

GPU_WINDOW = 256  # forward lengths on the GPU: multiples of this (few shapes), as llm.c's min(T, 256)


def read_prompt(args):
    """(prompt text or None, the flag that gave it)."""
    if args.prompt_file is None:
        return args.prompt, "--prompt"
    flag = f"--prompt-file {args.prompt_file}"
    try:
        with open(args.prompt_file, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise LlmcError(f"{flag}: cannot read the prompt file: {e.strerror}") from None
    except UnicodeDecodeError:
        raise LlmcError(f"{flag}: expected UTF-8 text") from None
    if text == "":
        raise LlmcError(f"{flag}: expected some text, found an empty file")
    return text, flag


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-e", default="gpt2_124M_bf16.bin", help="model .bin (fp32 or bf16) or descriptor (d6, d12, ...)")
    p.add_argument("--tokenizer", default="gpt2_tokenizer.bin", help="llm.c's tokenizer file")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="text the samples continue (default: none, EOT alone)")
    prompt.add_argument("--prompt-file", help="a UTF-8 file holding the prompt text")
    p.add_argument("-n", type=int, default=1, help="number of samples")
    p.add_argument("-g", type=int, default=64, help="tokens to generate per sample")
    p.add_argument("--top-k", type=int, default=None, help="draw from the k most likely tokens (default: all)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1.0)")
    p.add_argument("--seed", type=int, default=SAMPLE_RNG_SEED, help="seed of the samples' coin sequence")
    p.add_argument("--stop-at-eot", action="store_true", help="end a sample at the first EOT it generates")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--precision", default=None, choices=["bf16", "fp32"], help="default bf16 on cuda, fp32 on cpu")
    args = p.parse_args()
    precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    if args.n < 1:
        raise LlmcError(f"-n {args.n}: expected at least 1 sample")
    if args.g < 1:
        raise LlmcError(f"-g {args.g}: expected at least 1 token to generate")
    if not 0 < args.seed < 2**64:
        raise LlmcError(f"--seed {args.seed}: expected an integer in [1, 2^64) (xorshift stays at 0 from 0)")
    sampler = Sampler(args.temperature, args.top_k, args.seed)
    text, prompt_flag = read_prompt(args)
    tokenizer = Tokenizer.load(args.tokenizer) if text is not None else Tokenizer.load_optional(args.tokenizer)

    if args.device == "cuda":
        cuda.init_device(0)
    kwargs = dict(device=args.device, precision=precision)
    model = GPT2.from_checkpoint(args.e, **kwargs) if args.e.endswith(".bin") else GPT2.from_descriptor(args.e, **kwargs)
    c = model.config
    eot = tokenizer.eot_token if tokenizer is not None else c.vocab_size - 1
    prompt = prompt_tokens(tokenizer, text, eot)
    check_fits(len(prompt), args.g, c.max_seq_len, "the model's context", prompt_flag, f"-g {args.g}")
    window = GPU_WINDOW if model.gpu else 1
    longest = len(prompt) + args.g - 1
    model.allocate(1, min(-(-longest // window) * window, c.max_seq_len))
    print(f"{args.e}: {c.num_layers} layers, {c.channels} channels, {c.num_parameters:,} parameters, "
          f"{args.device} {precision} | prompt {len(prompt)} tokens | {sampler.describe()}, seed {args.seed}")

    for _ in range(args.n):
        print("---", flush=True)
        for token in prompt[1:]:
            print_token(tokenizer, token)
        for token in generate(model, prompt, args.g, sampler, window):
            if args.stop_at_eot and token == eot:
                break
            print_token(tokenizer, token)
        print()
    print("---")
    return 0


if __name__ == "__main__":
    run_main(main)
