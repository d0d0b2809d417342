"""Binary file helpers shared by every llm.c format: 256-word headers, exact-size checks, atomic writes.

Every llm.c file starts with a 1024-byte header of 256 little-endian 32-bit words. Readers here check
magic, version and the exact file size before trusting a single payload byte, and writers never leave a
half-written file behind: they write to a temporary file in the same directory and rename it into place.
A write that fails (full disk, no permission) removes its temporary file and becomes one LlmcError line; only
a process killed mid-write leaves one, which remove_stale_temps clears at the next start.
"""
import contextlib
import os
import tempfile

import numpy as np

from llmc_py import LlmcError

HEADER_WORDS = 256
HEADER_BYTES = 4 * HEADER_WORDS
TEMP_PREFIX = ".tmp_"  # the writers' temporary files: TEMP_PREFIX + final name + "." + random suffix


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
def _disk_errors(path):
    """An OSError of the block (ENOSPC, EACCES, EIO, ...) becomes one LlmcError line naming `path`."""
    try:
        yield
    except OSError as e:
        raise LlmcError(f"{path}: cannot write: {e.strerror or e}") from None


class _DiskFile:
    """What atomic_write yields: unbuffered writes of whole buffers (so nothing is left to flush at close, where
    a full disk would fail a second time), each failure an LlmcError naming the final path."""

    def __init__(self, fd, path):
        self.fd, self.path = fd, path

    def write(self, data):
        view = memoryview(data).cast("B")
        with _disk_errors(self.path):
            while view:
                view = view[os.write(self.fd, view):]
        return len(data)


@contextlib.contextmanager
def _replacing(path):
    """A new temporary file beside `path` (TEMP_PREFIX, a random suffix), as (descriptor, name): when the block
    ends without an error it is renamed to `path`, on any error (Ctrl-C included) it is deleted. An OSError of
    making, closing or renaming it becomes one LlmcError line naming `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    with _disk_errors(path):
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX + os.path.basename(path) + ".", dir=directory)
    try:
        try:
            yield fd, tmp
        finally:
            os.close(fd)
        with _disk_errors(path):
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary file name beside `path` for a writer that wants a name (a library's save_file, which
    replaces the empty file there); on success that file appears at `path` whole, on failure not at all, and an
    OSError of the writer becomes one LlmcError line."""
    with _replacing(path) as (_, tmp), _disk_errors(path):
        yield tmp


@contextlib.contextmanager
def atomic_write(path):
    """Yields a binary file (write only); on success the file appears at `path` whole, on failure not at all."""
    with _replacing(path) as (fd, _):
        yield _DiskFile(fd, path)
        with _disk_errors(path):
            os.fsync(fd)


def remove_stale_temps(directory):
    """Deletes the temporary files that writers killed mid-write (kill -9, power loss) left in `directory`;
    returns their names. Call it only while no writer of this program runs there."""
    names = sorted(name for name in os.listdir(directory) if name.startswith(TEMP_PREFIX))
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
    return names
