"""Shared by the dev/data scripts: token shard writing in llm.c's format, and file download.

The non-obvious decision: the writer refuses anything the trainer's reader would refuse (an empty shard,
tokens that do not fit the token type, 2^31 or more tokens) instead of writing it and failing at train time.
The shard formats, the reader and that writer live with the trainer, in llmc_py.dataloader (SHARD_FORMATS,
read_shard, write_shard); that reader takes only GPT-2 shards (u16): llm.c's trainer rejects the LLaMA-3
variant (u32), which is written for interchange only. Scripts put the repo root on sys.path before importing
this module.
"""
import json
import os
import sys
import urllib.request

import numpy as np

from llmc_py import LlmcError
from llmc_py.dataloader import write_shard
from llmc_py.fileio import atomic_write


def write_datafile(filename, toks, model_desc="gpt-2"):
    """Writes tokens as a shard (llmc_py.dataloader.write_shard) and says so."""
    nbytes = write_shard(filename, toks, model_desc)
    print(f"writing {np.asarray(toks).size:,} tokens to {filename} ({model_desc}, {nbytes:,} bytes)")


def download_file(url, fname, chunk_size=1 << 20):
    """Downloads url to fname with a progress line; fname appears only once the download is whole."""
    try:
        with urllib.request.urlopen(url) as resp, atomic_write(fname) as f:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            while chunk := resp.read(chunk_size):
                f.write(chunk)
                done += len(chunk)
                of_total = f" of {total:,}" if total else ""
                print(f"\r{fname}: {done:,}{of_total} bytes", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
            if total and done != total:
                raise LlmcError(f"{url}: expected {total} bytes, downloaded {done}")
    except OSError as e:  # urllib.error.URLError and socket timeouts are OSErrors
        raise LlmcError(f"{url}: download to {fname} failed: {getattr(e, 'reason', None) or e}") from None


def download_if_absent(url, path):
    """Downloads url to path unless path already exists, saying which of the two it does."""
    if os.path.exists(path):
        print(f"{path} already exists, skipping download")
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    print(f"downloading {url} to {path}")
    download_file(url, path)


def read_jsonl(path, required_field):
    """Yields (line number, object) for each non-blank line of a jsonl file whose object has a string
    `required_field`; anything else is a one-line LlmcError naming the file and line."""
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise LlmcError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise LlmcError(f"{path}:{lineno}: not a JSON object: {e.msg}") from None
                if not isinstance(obj, dict) or not isinstance(obj.get(required_field), str):
                    raise LlmcError(f"{path}:{lineno}: expected an object with a string field '{required_field}'")
                yield lineno, obj
        except UnicodeDecodeError as e:
            raise LlmcError(f"{path}: not UTF-8 text: {e.reason}") from None


def progress(label, done, total, width=30):
    """A one-line text progress bar on stderr, redrawn in place; ends the line when done == total."""
    filled = width * done // max(total, 1)
    print(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}",
          end="\n" if done >= total else "", file=sys.stderr, flush=True)
