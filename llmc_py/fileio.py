"""Binary file helpers shared by every llm.c format: 256-word headers, exact-size checks, atomic writes.

Every llm.c file starts with a 1024-byte header of 256 little-endian 32-bit words. Readers here check
magic, version and the exact file size before trusting a single payload byte, and writers never leave a
half-written file behind: they write to a temporary file in the same directory and rename it into place.
"""
import contextlib
import os

import numpy as np

from llmc_py import LlmcError

HEADER_WORDS = 256
HEADER_BYTES = 4 * HEADER_WORDS


def make_header(magic, version, dtype=np.int32):
    header = np.zeros(HEADER_WORDS, dtype=dtype)
    header[0] = magic
    header[1] = version
    return header


def read_header(path, magic, versions, dtype=np.int32, what="file"):
    """Reads and checks the 256-word header of `path`; returns (header array, file size in bytes)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise LlmcError(f"{path}: {what} not found") from None
    except OSError as e:
        raise LlmcError(f"{path}: cannot read {what}: {e.strerror}") from None
    if len(raw) < HEADER_BYTES:
        raise LlmcError(f"{path}: expected a {HEADER_BYTES}-byte {what} header, found a {size}-byte file")
    header = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    if int(header[0]) != magic:
        raise LlmcError(f"{path}: bad magic: expected {magic} ({what}), found {int(header[0])}")
    if int(header[1]) not in versions:
        want = " or ".join(str(v) for v in versions)
        raise LlmcError(f"{path}: unsupported {what} version: expected {want}, found {int(header[1])}")
    return header, size


def check_size(path, size, expected, what):
    if size != expected:
        raise LlmcError(f"{path}: expected {expected} bytes for {what}, found {size}")


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary file name beside `path` (hidden, this process's own) for a writer that wants a
    name (a library's save_file); on success that file appears at `path` whole, on failure not at all. The
    writer creates the file inside the guarded block, so even a Ctrl-C the moment it appears leaves nothing."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".tmp_{name}.{os.getpid()}")
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path):
    """Yields a binary file object; on success the file appears at `path` whole, on failure not at all."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
