"""HellaSwag val (jsonl) -> dev/data/hellaswag/hellaswag_val.bin, the eval file llm.c's trainer reads with -h 1.

The non-obvious decision: the context is encoded on its own (no EOT before it) and every ending as
" " + ending, so an ending's first token carries its leading space the way GPT-2 saw such text; the
trainer then scores the endings by mean per-token loss after the shared context (completion style,
acc_norm). File layout (spec 5.5): a 256 x i32 header (magic 20240522, version 1, number of examples,
longest example in bytes), then per example a u16 record: 65535, the record's size in bytes, its index,
the label, 4, the context length and tokens, then 4 x (ending length, ending tokens).

    python dev/data/hellaswag.py                        # downloads hellaswag_val.jsonl if absent
    python dev/data/hellaswag.py --input my.jsonl --out-dir /tmp/hs

llm.c's script also scores Hugging Face GPT-2 in PyTorch (124M: acc 0.2859, acc_norm 0.2955 on the
10,042 examples); this one only writes the file, which the trainer (or llmc_py.hellaswag) scores.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from data_common import download_if_absent, read_jsonl  # noqa: E402
from llmc_py import LlmcError, progress_bar, run_main  # noqa: E402
from llmc_py.dataloader import EVAL_DELIMITER, EVAL_MAGIC, EVAL_VERSION, NUM_COMPLETIONS  # noqa: E402
from llmc_py.fileio import atomic_write, make_header  # noqa: E402
from llmc_py.tokenizer import get_gpt2_encoding  # noqa: E402

DATA_CACHE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hellaswag")
VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
OUTPUT_NAME = "hellaswag_val.bin"


def read_examples(path):
    """The jsonl's examples as dicts, each checked for the fields the eval file needs."""
    examples = []
    for lineno, ex in read_jsonl(path, "ctx"):
        endings, label = ex.get("endings"), ex.get("label")
        if (not isinstance(endings, list) or len(endings) != NUM_COMPLETIONS
                or not all(isinstance(e, str) for e in endings)):
            raise LlmcError(f"{path}:{lineno}: expected 'endings' to be a list of {NUM_COMPLETIONS} strings")
        if isinstance(label, str) and label.isdigit():
            label = int(label)
        if not isinstance(label, int) or not 0 <= label < NUM_COMPLETIONS:
            raise LlmcError(f"{path}:{lineno}: expected 'label' 0..{NUM_COMPLETIONS - 1}, found {label!r}")
        examples.append(dict(ctx=ex["ctx"], endings=endings, label=label))
    return examples


def render_example(example, enc):
    """(label, context tokens, 4 lists of ending tokens) of one example."""
    ctx_tokens = enc.encode(example["ctx"])
    ending_tokens = [enc.encode(" " + ending) for ending in example["endings"]]
    return example["label"], ctx_tokens, ending_tokens


def example_record(index, label, ctx_tokens, ending_tokens):
    """One example's u16 record, its byte size filled in."""
    rec = [EVAL_DELIMITER, 0, index, label, len(ending_tokens), len(ctx_tokens), *ctx_tokens]
    for toks in ending_tokens:
        rec += [len(toks), *toks]
    if any(not 0 <= t < EVAL_DELIMITER for t in rec[5:]):
        raise LlmcError(f"example {index}: tokens and lengths must be below {EVAL_DELIMITER} (the delimiter)")
    rec[1] = 2 * len(rec)
    if rec[1] >= 1 << 16:
        raise LlmcError(f"example {index}: {rec[1]} bytes does not fit the u16 size field")
    return rec


def write_evalfile(path, rendered):
    """Writes the eval file from (label, ctx_tokens, ending_tokens) triples."""
    if not 0 < len(rendered) < 1 << 16:
        raise LlmcError(f"{path}: expected 1..65535 examples, found {len(rendered)}")
    records = [example_record(i, *r) for i, r in enumerate(rendered)]
    longest = max(2 * len(r) for r in records)
    header = make_header(EVAL_MAGIC, EVAL_VERSION)
    header[2] = len(records)
    header[3] = longest
    stream = np.fromiter((t for r in records for t in r), dtype="<u2")
    print(f"writing {len(records):,} examples to {path} ({1024 + stream.nbytes:,} bytes, "
          f"longest example {longest} bytes)")
    with atomic_write(path) as f:
        f.write(header.astype("<i4").tobytes())
        f.write(stream.tobytes())


def main():
    parser = argparse.ArgumentParser(description="HellaSwag val -> llm.c eval file")
    parser.add_argument("--input", help="local HellaSwag jsonl instead of the downloaded hellaswag_val.jsonl")
    parser.add_argument("--out-dir", default=DATA_CACHE_DIR, help=f"folder for {OUTPUT_NAME}")
    args = parser.parse_args()

    input_path = args.input
    if input_path is None:
        input_path = os.path.join(DATA_CACHE_DIR, "hellaswag_val.jsonl")
        download_if_absent(VAL_URL, input_path)
    examples = read_examples(input_path)
    if not examples:
        raise LlmcError(f"{input_path}: no examples")
    enc = get_gpt2_encoding()
    rendered = []
    with progress_bar(total=len(examples), desc="tokenizing", unit="example") as bar:
        for i, ex in enumerate(examples):
            try:
                rendered.append(render_example(ex, enc))
            except ValueError as e:  # tiktoken refuses special-token text such as <|endoftext|>
                raise LlmcError(f"{input_path}: example {i}: cannot encode: {e}") from None
            bar.update()
    os.makedirs(args.out_dir, exist_ok=True)
    write_evalfile(os.path.join(args.out_dir, OUTPUT_NAME), rendered)


if __name__ == "__main__":
    run_main(main)
