"""Hostile files against every reader: model, training state, debug state, tokenizer, token shard, HellaSwag.

Each reader gets a valid small file of its kind, damaged first systematically (every header field it uses set to
each extreme, every 64-bit count claiming terabytes, truncations at the header's and payload's edges), then by
Hypothesis (up to 4 random edits: truncations, header words, counts, bytes, trailing garbage). The reader must
accept the file or raise LlmcError with one line naming it; any other exception fails, and tracemalloc bounds
what a read allocates by the file's own size, so no header field can size an allocation the file does not back.
Hypothesis's example count is bounded for CI (LLMC_FUZZ_EXAMPLES, default 100 per reader) and derandomized, so
CI sees the same files every run; raise the count to search further. The last test runs the programs on damaged
files: one `error:` line.
"""
import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmc_py import LlmcError
from llmc_py.checkpoint import read_debug_state, read_model, read_state, write_debug_state, write_model
from llmc_py.config import GPT2Config
from llmc_py.dataloader import DataLoader, EvalLoader, write_shard
from llmc_py.gpt2 import GPT2
from llmc_py.rand import gpt2_random_init
from llmc_py.tokenizer import Tokenizer, write_tokenizer

from test_multiprocess import launch

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = GPT2Config(max_seq_len=8, vocab_size=16, padded_vocab_size=16, num_layers=1, num_heads=2, channels=8)
B, T = 4, 8
PARAMS = gpt2_random_init(CONFIG)
FUZZ = settings(max_examples=int(os.environ.get("LLMC_FUZZ_EXAMPLES", "100")), deadline=None, derandomize=True,
                database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# a read may allocate this much more than the file it reads: decoding u16 to int64, one Python object per
# tokenizer record, the loaders' (B, T) buffers
ALLOWED = lambda size: 8 * size + (1 << 20)  # noqa: E731
INT32_EXTREMES = [0, 1, -1, 2, 3, 5, 255, 256, 65535, 65536, 1 << 24, 1 << 30, 2**31 - 1, -(2**31)]
UINT64_EXTREMES = [0, 1, 2**31, 2**32 - 1, 2**32, 1 << 40, 2**62, 2**63, 2**64 - 1]


# ----------------------------------------------------------------------------
# valid seed files, one per reader

def model_file(folder):
    path = folder / "model.bin"
    write_model(str(path), CONFIG, PARAMS, 3)
    return path


def shard_file(folder, name="train.bin"):
    path = folder / name
    write_shard(str(path), np.random.default_rng(1).integers(0, CONFIG.vocab_size, 3 * B * T + 1))
    return path


def trained_model(folder):
    """A tiny model after one AdamW update on a shuffled loader, and that loader."""
    model = GPT2(CONFIG, PARAMS.copy())
    model.allocate(B, T)
    loader = DataLoader(shard_file(folder), B, T, should_shuffle=True)
    inputs, targets = loader.next_batch()
    model.forward(inputs)
    model.backward(inputs, targets, 1, 0)
    model.update(1e-3, 0.0, 1.0, 1)
    return model, loader


def state_file(folder):
    model, loader = trained_model(folder)
    path = folder / "state.bin"
    model.write_state(str(path), 1, loader)
    return path


def debug_state_file(folder):
    rng = np.random.default_rng(2)
    x = rng.integers(0, CONFIG.vocab_size, (2, 4)).astype(np.int32)
    path = folder / "debug.bin"
    write_debug_state(str(path), x, x, rng.standard_normal((2, 4, CONFIG.vocab_size)).astype(np.float32), 2.5,
                      rng.standard_normal(CONFIG.num_parameters).astype(np.float32), [2.5, 2.4, 2.3])
    return path


def tokenizer_file(folder):
    rng = np.random.default_rng(3)
    tokens = [bytes(rng.integers(0, 256, rng.integers(1, 5)).astype(np.uint8)) for _ in range(300)]
    path = folder / "tokenizer.bin"
    write_tokenizer(str(path), tokens, 299)
    return path


def hellaswag_file(folder):
    import hellaswag
    rng = np.random.default_rng(4)
    rendered = [(int(rng.integers(0, 4)), list(rng.integers(0, 16, 3)),
                 [list(rng.integers(0, 16, n)) for n in (1, 2, 3, 2)]) for _ in range(3)]
    path = folder / "hellaswag.bin"
    hellaswag.write_evalfile(str(path), rendered)
    return path


# ----------------------------------------------------------------------------
# the readers: each prepares what the read needs (untraced), then returns the read itself

def load_state_into_a_model(path):
    """GPT2.load_state: header checks, the payload, and the loader's resume checks (permutations, MT state)
    against the shard the state was written with."""
    model = GPT2(CONFIG, PARAMS.copy())
    loader = DataLoader(path.parent / "train.bin", B, T, should_shuffle=True)
    return lambda: model.load_state(str(path), loader)


def read_shard_in_loader(path):
    def read():
        loader = DataLoader(str(path), B, T, should_shuffle=True, vocab_size=CONFIG.vocab_size)
        for _ in range(4):
            loader.next_batch()
    return read


def read_hellaswag(path):
    def read():
        loader = EvalLoader(str(path), B, T)
        for _ in range(loader.num_batches):
            loader.next_batch()
    return read


READERS = {
    "model": (model_file, lambda p: lambda: read_model(str(p)), range(8)),
    "state": (state_file, lambda p: lambda: read_state(str(p), CONFIG.num_parameters), range(11)),
    "state via load_state": (state_file, load_state_into_a_model, range(11)),
    "debug state": (debug_state_file, lambda p: lambda: read_debug_state(str(p), CONFIG), range(15)),
    "tokenizer": (tokenizer_file, lambda p: lambda: Tokenizer.load(p), range(4)),
    "token shard": (shard_file, read_shard_in_loader, range(3)),
    "hellaswag": (hellaswag_file, read_hellaswag, range(4)),
}


def u64_offsets(name, data):
    """Where a file holds 64-bit counts and positions: the state header's RNG and loader position, the loader
    section's shard and sample counts."""
    if not name.startswith("state"):
        return []
    use_master, shuffled = struct.unpack_from("<ii", data, 16)
    end = 1024 + 4 * CONFIG.num_parameters * (3 if use_master else 2)
    offsets = [80, 88, 120, 128]
    if shuffled:
        (num_shards,) = struct.unpack_from("<Q", data, end)
        offsets += [end, end + 8 + 4 * num_shards]
    return offsets


def edits(size, header_words, u64s):
    """1..4 edits of a file of `size` bytes: truncate, set a header word or a 64-bit count, set a byte, append."""
    kinds = [st.tuples(st.just("truncate"), st.integers(0, size - 1)),
             st.tuples(st.just("word"), st.sampled_from(header_words) | st.integers(0, 255),
                       st.sampled_from(INT32_EXTREMES) | st.integers(-(2**31), 2**31 - 1)),
             st.tuples(st.just("byte"), st.integers(0, size - 1), st.integers(0, 255)),
             st.tuples(st.just("append"), st.binary(min_size=1, max_size=64))]
    if u64s:
        kinds.append(st.tuples(st.just("u64"), st.sampled_from(u64s),
                               st.sampled_from(UINT64_EXTREMES) | st.integers(0, 2**64 - 1)))
    return st.lists(st.one_of(kinds), min_size=1, max_size=4)


def apply(data, changes):
    data = bytearray(data)
    for kind, *args in changes:
        if kind == "truncate":
            del data[args[0]:]
        elif kind == "word" and 4 * args[0] + 4 <= len(data):
            struct.pack_into("<i", data, 4 * args[0], args[1])
        elif kind == "u64" and args[0] + 8 <= len(data):
            struct.pack_into("<Q", data, args[0], args[1])
        elif kind == "byte" and args[0] < len(data):
            data[args[0]] = args[1]
        elif kind == "append":
            data += args[0]
    return bytes(data)


def systematic(size, header_words, u64s):
    """Every header field the format uses at every extreme, every 64-bit count at every extreme, and truncations
    at the header's and the payload's edges."""
    for word in header_words:
        for value in INT32_EXTREMES:
            yield [("word", word, value)]
    for offset in u64s:
        for value in UINT64_EXTREMES:
            yield [("u64", offset, value)]
    for length in sorted({0, 1, 4, 1023, 1024, 1025, size // 2, size - 1}):
        yield [("truncate", length)]


def check_read(prepare, path, content):
    """The reader accepts the file or raises one LlmcError line naming it, allocating no more than the file backs."""
    path.write_bytes(content)
    read = prepare(path)
    tracemalloc.start()
    try:
        read()
    except LlmcError as e:
        message = str(e)
        assert "\n" not in message and str(path) in message, message
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= ALLOWED(len(content)), f"{peak} bytes allocated reading a {len(content)}-byte file"


@pytest.mark.parametrize("name", list(READERS))
def test_hostile_files_give_one_line(name, tmp_path_factory):
    make, prepare, header_words = READERS[name]
    folder = tmp_path_factory.mktemp(name.replace(" ", "_"))
    seed = make(folder)
    data = seed.read_bytes()
    prepare(seed)()  # the seed itself is valid
    path = folder / "hostile.bin"
    u64s = u64_offsets(name, data)
    for changes in systematic(len(data), header_words, u64s):
        check_read(prepare, path, apply(data, changes))

    @FUZZ
    @given(edits(len(data), list(header_words), u64s))
    def random_edits(changes):
        check_read(prepare, path, apply(data, changes))
    random_edits()


# ----------------------------------------------------------------------------
# the programs: a damaged file is one `error:` line on stderr and exit 1, never a traceback

def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run folder: a tiny model, train/val shards, tokenizer, HellaSwag file and one checkpoint (-o out)."""
    folder = tmp_path_factory.mktemp("programs")
    model_file(folder)
    (folder / "model.bin").rename(folder / "tiny.bin")
    shard_file(folder, "val.bin")
    shard_file(folder, "train.bin")
    tokenizer_file(folder).rename(folder / "gpt2_tokenizer.bin")
    (folder / "dev" / "data" / "hellaswag").mkdir(parents=True)
    hellaswag_file(folder).rename(folder / "dev" / "data" / "hellaswag" / "hellaswag_val.bin")
    debug_state_file(folder)
    return folder


TRAIN_ARGS = ["--device", "cpu", "-e", "tiny.bin", "-i", "train.bin", "-j", "val.bin", "-b", B, "-t", T, "-v", 1000,
              "-m", 1, "-s", 0, "-x", 2]


@pytest.mark.parametrize("damaged,args", [
    ("tiny.bin", []),
    ("train.bin", []),
    ("gpt2_tokenizer.bin", []),
    ("dev/data/hellaswag/hellaswag_val.bin", ["-h", 1]),
    ("out/state_00000001_00000.bin", ["-y", 1]),
    ("debug.bin", None),
])
def test_programs_on_damaged_files(run_folder, tmp_path, damaged, args):
    import shutil
    folder = tmp_path / "run"
    shutil.copytree(run_folder, folder)
    if args is None:
        cmd = [REPO_ROOT / "test_gpt2cu.py", "--device", "cpu", "-e", "tiny.bin", "--debug-state", "debug.bin"]
    else:
        cmd = [REPO_ROOT / "train_gpt2cu.py", *TRAIN_ARGS, "-o", "out", "-n", 1, *args]
        if "-y" in args:  # a checkpoint to resume from first
            launch(folder, [*cmd[:-2], "-x", 1], timeout=300)
    truncate(folder / damaged)
    proc = launch(folder, cmd, expect=1, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and damaged in lines[0], proc.stderr[-2000:]
