"""Shared by the dev/data scripts: token shard writing in llm.c's format, all-or-nothing output, file download.

The non-obvious decisions: the writer refuses anything the trainer's reader would refuse (an empty shard,
tokens that do not fit the token type, 2^31 or more tokens) instead of writing it and failing at train time;
and a script's output files appear together or not at all (OutputFiles), so a run that fails or is
interrupted part way leaves nothing behind and a rerun after fixing its input writes what a clean run writes.
The shard formats, the reader and that writer live with the trainer, in llmc_py.dataloader (SHARD_FORMATS,
read_shard, write_shard); that reader takes only GPT-2 shards (u16): llm.c's trainer rejects the LLaMA-3
variant (u32), which is written for interchange only. Scripts put the repo root on sys.path before importing
this module.
"""
import contextlib
import json
import os
import urllib.request

import numpy as np

from llmc_py import LlmcError, progress_bar
from llmc_py.dataloader import write_shard
from llmc_py.fileio import atomic_write


class OutputFiles:
    """The files of one run, all or nothing: `with OutputFiles(out_dir) as out:` makes out_dir if needed and
    each file given to out.stage(path) is written under a hidden name beside path; when the block ends
    without an error they are renamed into place, and on an error or Ctrl-C they are deleted, together
    with the folders this run made."""

    def __init__(self, out_dir):
        self.out_dir = os.path.abspath(out_dir)
        self.staged = []  # (hidden name, final name)
        self.made = []    # folders this run created, innermost first

    def __enter__(self):
        folder = self.out_dir
        while not os.path.isdir(folder):
            self.made.append(folder)
            folder = os.path.dirname(folder)
        try:
            os.makedirs(self.out_dir, exist_ok=True)
        except BaseException:  # __exit__ does not run when __enter__ fails
            self._remove_made()
            raise
        return self

    def stage(self, path):
        """The name to write `path` under until the run succeeds."""
        hidden = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.partial")
        self.staged.append((hidden, path))
        return hidden

    def __exit__(self, kind, value, tb):
        if kind is None:
            for hidden, path in self.staged:
                os.replace(hidden, path)
            return
        for hidden, _ in self.staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(hidden)
        self._remove_made()

    def _remove_made(self):
        for folder in self.made:
            with contextlib.suppress(OSError):  # a folder something else wrote into stays
                os.rmdir(folder)


def write_datafile(filename, toks, model_desc="gpt-2", outputs=None):
    """Writes tokens as a shard (llmc_py.dataloader.write_shard) and says so. With `outputs` (an OutputFiles)
    the shard is staged and appears only when the whole run succeeds."""
    nbytes = write_shard(outputs.stage(filename) if outputs is not None else filename, toks, model_desc,
                         name=filename)
    print(f"writing {np.asarray(toks).size:,} tokens to {filename} ({model_desc}, {nbytes:,} bytes)")


def download_file(url, fname, chunk_size=1 << 20):
    """Downloads url to fname with a progress bar; fname appears only once the download is whole."""
    try:
        with urllib.request.urlopen(url) as resp, atomic_write(fname) as f:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            with progress_bar(total=total or None, desc=os.path.basename(fname), unit="B", unit_scale=True,
                              unit_divisor=1024) as bar:
                while chunk := resp.read(chunk_size):
                    f.write(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
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
                    raise LlmcError(f"{path}:{lineno}: not a JSON object: {e.msg} at column {e.colno}") from None
                if not isinstance(obj, dict) or not isinstance(obj.get(required_field), str):
                    raise LlmcError(f"{path}:{lineno}: expected an object with a string field '{required_field}'")
                yield lineno, obj
        except UnicodeDecodeError as e:
            raise LlmcError(f"{path}: not UTF-8 text: {e.reason}") from None

