"""FineWeb / FineWeb-Edu -> GPT-2 token shards of exactly -s tokens, named and split as llm.c's fineweb.py.

The non-obvious decision: shards have a fixed size, not document boundaries. Documents (each EOT +
its tokens) stream into a buffer of -s tokens; a document that does not fit is split, its head
completing the shard and its tail starting the next one, and the last shard holds what remains.
Shard 0 is val, all later shards train: `{fineweb|edu_fineweb}_{val|train}_{%06d}.bin` in
dev/data/{fineweb10B|fineweb100B|edu_fineweb10B|edu_fineweb100B}/. Documents are tokenized in a process
pool whose results come back in document order, so the shards are the same on every run. Each shard is
written as soon as it is full, under a hidden name, and all of them are renamed into place only when the
whole run has succeeded: a run that fails or is interrupted leaves no shards behind.

    python dev/data/fineweb.py -v 10B                     # HuggingFaceFW/fineweb sample-10BT (needs `datasets`)
    python dev/data/fineweb.py -t edu -v 100B
    python dev/data/fineweb.py --input docs.jsonl --out-dir /tmp/fw -s 1000000   # local jsonl ({"text": ...})
"""
import argparse
import glob
import os
import signal
import sys
from multiprocessing import Pool

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from data_common import OutputFiles, read_jsonl, write_datafile  # noqa: E402
from llmc_py import LlmcError, progress_bar, run_main  # noqa: E402
from llmc_py.tokenizer import get_gpt2_encoding  # noqa: E402

DATA_DIR = os.path.dirname(os.path.abspath(__file__))
HF_DATASETS = {"classic": "HuggingFaceFW/fineweb", "edu": "HuggingFaceFW/fineweb-edu"}
FILE_PREFIX = {"classic": "fineweb", "edu": "edu_fineweb"}
REMOTE_NAMES = {"10B": "sample-10BT", "100B": "sample-100BT"}
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")

_enc = None  # the GPT-2 encoding, one per worker process


# ----------------------------------------------------------------------------
# document sources: the Hugging Face dataset, or local jsonl / parquet files

def hf_texts(kind, version):
    try:
        from datasets import load_dataset
    except ImportError:
        raise LlmcError("downloading FineWeb needs the Hugging Face `datasets` package (pip install datasets); "
                        "without it, pass --input with local .jsonl or .parquet files of {\"text\": ...} "
                        "documents") from None
    print(f"loading {HF_DATASETS[kind]} ({REMOTE_NAMES[version]}) with datasets.load_dataset")
    dataset = load_dataset(HF_DATASETS[kind], name=REMOTE_NAMES[version], split="train")
    return (doc["text"] for doc in dataset)


def local_files(inputs):
    """Files named by --input: a folder's .jsonl/.json/.parquet files sorted by name, files as given."""
    files = []
    for path in inputs:
        if os.path.isdir(path):
            files += sorted(p for p in glob.glob(os.path.join(path, "*")) if p.endswith(LOCAL_SUFFIXES))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise LlmcError(f"{path}: no such file or folder")
    if not files:
        raise LlmcError(f"{' '.join(inputs)}: no {'/'.join(LOCAL_SUFFIXES)} files")
    return files


def local_texts(files):
    """Each document's "text", file by file, line by line (jsonl) or row by row (parquet)."""
    for path in files:
        if path.endswith(".parquet"):
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise LlmcError(f"{path}: reading parquet needs the pyarrow package (pip install pyarrow)") from None
            for batch in pq.ParquetFile(path).iter_batches(columns=["text"]):
                yield from batch.column(0).to_pylist()
            continue
        for _, doc in read_jsonl(path, "text"):
            yield doc["text"]


# ----------------------------------------------------------------------------
# tokenization (in the worker processes) and sharding

def _init_worker():
    global _enc
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle: it ends the pool
    _enc = get_gpt2_encoding()


def tokenize(text):
    """One document -> u16 tokens: EOT, then the text's tokens."""
    tokens = [_enc.eot_token]
    tokens.extend(_enc.encode_ordinary(text))
    return np.array(tokens, dtype=np.uint16)


class ShardWriter:
    """Fills shards of exactly shard_size tokens and writes each one as soon as it is full (staged in `outputs`,
    an OutputFiles, when given), with a progress bar per shard. Use it in a `with` block, which closes the bar."""

    def __init__(self, out_dir, prefix, shard_size, model_desc, outputs=None):
        self.out_dir, self.prefix, self.model_desc, self.outputs = out_dir, prefix, model_desc, outputs
        self.shard_size = shard_size
        self.buf = np.empty(shard_size, dtype=np.uint16)
        self.count = 0
        self.shard_index = 0
        self.files = []
        self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close_bar()

    def _close_bar(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _fill(self, tokens):
        if self.bar is None:
            self.bar = progress_bar(total=self.shard_size, desc=f"shard {self.shard_index}", unit="tok",
                                    unit_scale=True)
        self.buf[self.count:self.count + len(tokens)] = tokens
        self.count += len(tokens)
        self.bar.update(len(tokens))

    def add(self, tokens):
        pos = 0
        while self.count + (len(tokens) - pos) >= self.shard_size:  # the document fills this shard
            take = self.shard_size - self.count
            self._fill(tokens[pos:pos + take])
            pos += take
            self._write()
        if pos < len(tokens):
            self._fill(tokens[pos:])

    def _write(self):
        self._close_bar()
        split = "val" if self.shard_index == 0 else "train"
        path = os.path.join(self.out_dir, f"{self.prefix}_{split}_{self.shard_index:06d}.bin")
        write_datafile(path, self.buf[:self.count], self.model_desc, self.outputs)
        self.files.append(path)
        self.shard_index += 1
        self.count = 0

    def finish(self):
        """Writes the last, partial shard (if any tokens are left)."""
        if self.count:
            self._write()
        return self.files


def main():
    parser = argparse.ArgumentParser(description="FineWeb and FineWeb-Edu dataset preprocessing")
    parser.add_argument("-t", "--type", choices=["classic", "edu"], default="classic", help="FineWeb or FineWeb-Edu")
    parser.add_argument("-v", "--version", choices=["10B", "100B"], default="10B", help="sample size")
    parser.add_argument("-m", "--model_desc", choices=["gpt-2", "llama-3"], default="gpt-2",
                        help="model whose tokenizer encodes the text (only gpt-2 here)")
    parser.add_argument("-s", "--shard_size", type=int, default=10**8, help="tokens per shard")
    parser.add_argument("--input", nargs="+", help="local .jsonl/.parquet files or folders of them "
                        "(documents with a 'text' field) instead of the Hugging Face download")
    parser.add_argument("--out-dir", help="output folder (default dev/data/{fineweb|edu_fineweb}{10B|100B})")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) - 2),
                        help="tokenizer processes")
    args = parser.parse_args()
    if args.model_desc == "llama-3":
        raise LlmcError("-m llama-3 needs the LLaMA 3 tokenizer, which llmc-py does not ship: use -m gpt-2")
    if args.shard_size < 1:
        raise LlmcError(f"-s {args.shard_size}: expected at least 1 token per shard")
    if args.workers < 1:
        raise LlmcError(f"--workers {args.workers}: expected at least 1")

    out_dir = args.out_dir or os.path.join(DATA_DIR, FILE_PREFIX[args.type] + args.version)
    texts = local_texts(local_files(args.input)) if args.input else hf_texts(args.type, args.version)
    get_gpt2_encoding()  # fail here, once, rather than in every worker
    with (OutputFiles(out_dir) as out, ShardWriter(out_dir, FILE_PREFIX[args.type], args.shard_size,
                                                   args.model_desc, out) as writer,
          Pool(args.workers, initializer=_init_worker) as pool):
        for tokens in pool.imap(tokenize, texts, chunksize=16):  # imap yields in document order
            writer.add(tokens)
        files = writer.finish()
        if not files:
            raise LlmcError("no documents to tokenize")
    print(f"wrote {len(files)} shards to {out_dir}")


if __name__ == "__main__":
    run_main(main)
