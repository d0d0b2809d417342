"""TinyStories -> GPT-2 token files TinyStories_val.bin and TinyStories_train.bin, as llm.c writes them.

The non-obvious decision: shards are tokenized in a process pool but concatenated in *shard order*, so
the output is the same on every run and machine; llm.c appends them in completion order, which makes its
train file's order (not its content or size) vary from run to run. Otherwise as llm.c: the JSON shards
sorted by name, shard 0 is val and the rest train; each shard's list of stories is shuffled with
random.Random(1337 + the shard's index within its split); every story is stripped of surrounding
whitespace and written as EOT followed by its tokens. For the full download llm.c reports 50 shards,
19,043,638 val tokens and 925,653,391 train tokens. The two files appear together once the whole run has
succeeded; a failed or interrupted run leaves neither.

    python dev/data/tinystories.py                          # downloads and unpacks TinyStories_all_data.tar.gz
    python dev/data/tinystories.py --input shards_dir/ --out-dir /tmp/ts
    python dev/data/tinystories.py --input data00.json data01.json ...   # or a .tar.gz of such shards
"""
import argparse
import glob
import json
import os
import random
import shutil
import signal
import sys
import tarfile
from multiprocessing import Pool

import numpy as np
from tqdm.utils import CallbackIOWrapper

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from data_common import OutputFiles, download_if_absent, write_datafile  # noqa: E402
from llmc_py import LlmcError, progress_bar, run_main  # noqa: E402
from llmc_py.tokenizer import get_gpt2_encoding  # noqa: E402

DATA_CACHE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tinystories")
ARCHIVE_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories_all_data.tar.gz"
SHUFFLE_SEED = 1337

_enc = None  # the GPT-2 encoding, one per worker process


# ----------------------------------------------------------------------------
# download and unpack

def unpack(archive_path, data_dir):
    """Unpacks the archive's JSON shards into data_dir: into a temporary folder first, renamed when whole and
    removed when unpacking fails or is interrupted. The archive is read as a stream, its bar counting the
    compressed bytes read."""
    if os.path.isdir(data_dir):
        print(f"{data_dir} already exists, skipping unpacking")
        return
    tmp = data_dir + ".partial"
    print(f"unpacking {archive_path} to {data_dir}")
    try:
        with (open(archive_path, "rb") as raw,
              progress_bar(total=os.path.getsize(archive_path), desc=f"unpacking {os.path.basename(archive_path)}",
                           unit="B", unit_scale=True, unit_divisor=1024) as bar,
              tarfile.open(fileobj=CallbackIOWrapper(bar.update, raw, "read"), mode="r|*") as tar):
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")  # no absolute paths, links out of tmp, or devices
            else:
                tar.extractall(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (OSError, tarfile.TarError)):
            raise LlmcError(f"{archive_path}: cannot unpack: {e}") from None
        raise
    os.replace(tmp, data_dir)


def find_shards(inputs):
    """The JSON shard files named by --input (folders, files or archives), sorted by name as llm.c does."""
    files = []
    for path in inputs:
        if os.path.isdir(path):
            files += glob.glob(os.path.join(path, "**", "*.json"), recursive=True)
        elif path.endswith((".tar.gz", ".tgz", ".tar")):
            data_dir = os.path.join(os.path.dirname(os.path.abspath(path)),
                                    os.path.basename(path).split(".tar")[0].split(".tgz")[0])
            unpack(path, data_dir)
            files += glob.glob(os.path.join(data_dir, "**", "*.json"), recursive=True)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise LlmcError(f"{path}: no such file or folder")
    files = sorted(set(files))
    if len(files) < 2:
        raise LlmcError(f"{' '.join(inputs)}: expected at least 2 JSON shards (shard 0 is val, the rest train), "
                        f"found {len(files)}")
    return files


# ----------------------------------------------------------------------------
# tokenization (runs in the worker processes)

def _init_worker():
    global _enc
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle: it ends the pool
    _enc = get_gpt2_encoding()


def tokenize_shard(job):
    """(index within split, path) -> u16 tokens: the shuffled stories, each EOT + its stripped text."""
    index, path = job
    try:
        with open(path, encoding="utf-8") as f:
            stories = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LlmcError(f"{path}: cannot read the JSON shard: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(stories, list) or not all(isinstance(s, dict) and isinstance(s.get("story"), str)
                                                for s in stories):
        raise LlmcError(f"{path}: expected a JSON list of objects with a string field 'story'")
    random.Random(SHUFFLE_SEED + index).shuffle(stories)
    eot = _enc.eot_token
    tokens = []
    for s in stories:
        tokens.append(eot)
        tokens.extend(_enc.encode_ordinary(s["story"].strip()))
    return np.array(tokens, dtype=np.uint16)


def tokenize_split(name, paths, pool):
    """Tokenizes a split's shards in the pool; returns the concatenation in shard order."""
    parts = []
    with progress_bar(total=len(paths), desc=f"tokenizing {name}", unit="shard") as bar:
        for part in pool.imap(tokenize_shard, list(enumerate(paths))):  # imap yields in submission order
            parts.append(part)
            bar.update()
    return np.concatenate(parts)


def main():
    parser = argparse.ArgumentParser(description="TinyStories dataset preprocessing")
    parser.add_argument("-m", "--model_desc", choices=["gpt-2", "llama-3"], default="gpt-2",
                        help="model whose tokenizer encodes the text (only gpt-2 here)")
    parser.add_argument("--input", nargs="+", help="local JSON shards: folders, files, or a .tar.gz of them, "
                        "instead of the downloaded TinyStories_all_data.tar.gz")
    parser.add_argument("--out-dir", default=DATA_CACHE_DIR, help="folder for the two .bin files")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes")
    args = parser.parse_args()
    if args.model_desc == "llama-3":
        raise LlmcError("-m llama-3 needs the LLaMA 3 tokenizer, which llmc-py does not ship: use -m gpt-2")
    if args.workers < 1:
        raise LlmcError(f"--workers {args.workers}: expected at least 1")

    inputs = args.input
    if inputs is None:
        archive = os.path.join(DATA_CACHE_DIR, "TinyStories_all_data.tar.gz")
        download_if_absent(ARCHIVE_URL, archive)
        inputs = [archive]
    shards = find_shards(inputs)
    print(f"number of shards: {len(shards)}")
    get_gpt2_encoding()  # fail here, once, rather than in every worker
    with OutputFiles(args.out_dir) as out, Pool(min(args.workers, len(shards)), initializer=_init_worker) as pool:
        for name, paths in (("val", shards[:1]), ("train", shards[1:])):
            tokens = tokenize_split(name, paths, pool)
            write_datafile(os.path.join(args.out_dir, f"TinyStories_{name}.bin"), tokens, args.model_desc, out)


if __name__ == "__main__":
    run_main(main)
