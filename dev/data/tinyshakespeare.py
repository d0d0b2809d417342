"""Tiny Shakespeare -> GPT-2 token shards, byte for byte as llm.c's dev/data/tinyshakespeare.py writes them.

The non-obvious decision: every section of the text split on "\\n\\n" gets its "\\n\\n" back before encoding,
so the blank line stays in the text and each EOT *follows* it (the last section gets none). That is
llm.c's historical behaviour; keeping it keeps the shards identical (val 32,768 tokens, train 305,260).

    python dev/data/tinyshakespeare.py              # downloads input.txt into dev/data/tinyshakespeare/ if absent
    python dev/data/tinyshakespeare.py --input my.txt --out-dir /tmp/ts
"""
import argparse
import os
import sys

# runnable as `python dev/data/tinyshakespeare.py`: llmc_py lives at the repo root, two levels up
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from data_common import OutputFiles, download_if_absent, write_datafile  # noqa: E402
from llmc_py import LlmcError, run_main  # noqa: E402
from llmc_py.tokenizer import get_gpt2_encoding  # noqa: E402

DATA_CACHE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tinyshakespeare")
INPUT_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
VAL_TOKENS = 32768


def tokenize(text, enc):
    eot = enc.eot_token
    sections = text.split("\n\n")
    tokens = []
    for i, s in enumerate(sections):
        tokens.append(eot)
        spad = s + "\n\n" if i != len(sections) - 1 else s
        tokens.extend(enc.encode_ordinary(spad))
    return tokens


def main():
    parser = argparse.ArgumentParser(description="Tiny Shakespeare dataset preprocessing")
    parser.add_argument("-m", "--model_desc", choices=["gpt-2", "llama-3"], default="gpt-2",
                        help="model whose tokenizer encodes the text (only gpt-2 here)")
    parser.add_argument("--input", help="local text file to tokenize instead of the downloaded input.txt")
    parser.add_argument("--out-dir", default=DATA_CACHE_DIR, help="folder for the two .bin shards")
    args = parser.parse_args()
    if args.model_desc == "llama-3":
        raise LlmcError("-m llama-3 needs the LLaMA 3 tokenizer, which llmc-py does not ship: use -m gpt-2")

    input_path = args.input
    if input_path is None:
        input_path = os.path.join(DATA_CACHE_DIR, "input.txt")
        download_if_absent(INPUT_URL, input_path)
    try:
        with open(input_path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise LlmcError(f"{input_path}: cannot read the input text: {getattr(e, 'strerror', None) or e}") from None

    tokens = tokenize(text, get_gpt2_encoding())
    with OutputFiles(args.out_dir) as out:  # both shards or neither
        for name, part in (("val", tokens[:VAL_TOKENS]), ("train", tokens[VAL_TOKENS:])):
            write_datafile(os.path.join(args.out_dir, f"tiny_shakespeare_{name}.bin"), part, args.model_desc, out)


if __name__ == "__main__":
    run_main(main)
