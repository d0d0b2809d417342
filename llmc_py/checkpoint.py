"""llm.c's model, training-state and debug-state files, read and written byte for byte.

Readers trust nothing: magic, version, header fields and the exact file size are checked before the
payload is read, and every problem is one LlmcError line naming the file. Writers go through
fileio.atomic_write, so a crash mid-save never leaves a half-written checkpoint under the real name.
Where llm.c writes uninitialized memory (the Mersenne Twister's seed_ field) we write zeros.
"""
import struct
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from llmc_py import LlmcError
from llmc_py.config import GPT2Config
from llmc_py.fileio import HEADER_BYTES, atomic_write, check_size, make_header, read_header
from llmc_py.rand import MT_STATE_BYTES

MODEL_MAGIC = 20240326
MODEL_VERSION_FP32 = 3
MODEL_VERSION_BF16 = 5
STATE_MAGIC = 20240527
STATE_VERSION = 1
DEBUG_MAGIC = 20240327
DEBUG_VERSION = 2
# Slots of the debug-state header that llm.c's reader ignores: we keep the reference losses there.
DEBUG_LOSS_COUNT_SLOT = 4
DEBUG_LOSS_SLOTS = 10

MODEL_DTYPES = {MODEL_VERSION_FP32: np.dtype("<f4"), MODEL_VERSION_BF16: np.dtype(ml_dtypes.bfloat16)}


# ----------------------------------------------------------------------------
# model files (versions 3 = fp32, 5 = bf16)

def read_model_header(path, versions=(MODEL_VERSION_FP32, MODEL_VERSION_BF16)):
    """Returns (config, version) after checking the header against the file size."""
    header, size = read_header(path, MODEL_MAGIC, versions, what="model file")
    version = int(header[1])
    maxT, V, L, NH, C, Vp = (int(x) for x in header[2:8])
    config = GPT2Config(max_seq_len=maxT, vocab_size=V, padded_vocab_size=Vp,
                        num_layers=L, num_heads=NH, channels=C)
    config.validate(path)
    check_size(path, size, HEADER_BYTES + MODEL_DTYPES[version].itemsize * config.num_parameters,
               f"a version {version} model with L={L} C={C} NH={NH} maxT={maxT} Vp={Vp}")
    return config, version


def read_model(path, versions=(MODEL_VERSION_FP32, MODEL_VERSION_BF16)):
    """Returns (config, params, version); params is the flat array in the file's dtype (f32 or bf16)."""
    config, version = read_model_header(path, versions)
    params = np.fromfile(path, dtype=MODEL_DTYPES[version], offset=HEADER_BYTES)
    return config, params, version


def write_model(path, config, params, version):
    """Writes a flat parameter array (any float dtype) as version 3 (f32) or 5 (bf16, round to nearest even)."""
    if version not in MODEL_DTYPES:
        raise LlmcError(f"{path}: cannot write model version {version}, expected 3 (fp32) or 5 (bf16)")
    if params.size != config.num_parameters:
        raise LlmcError(f"{path}: expected {config.num_parameters} parameters, given {params.size}")
    header = make_header(MODEL_MAGIC, version)
    header[2:8] = (config.max_seq_len, config.vocab_size, config.num_layers,
                   config.num_heads, config.channels, config.padded_vocab_size)
    payload = np.ascontiguousarray(params.reshape(-1)).astype(MODEL_DTYPES[version], copy=False)
    with atomic_write(path) as f:
        f.write(header.astype("<i4").tobytes())
        f.write(payload.tobytes())


# ----------------------------------------------------------------------------
# training state files (state_%08d_%05d.bin)

@dataclass
class LoaderState:
    """The shuffled train loader's position: shard order, sample order and its Mersenne Twister."""
    shard_perm: np.ndarray   # int32 [num_shards]
    sample_perm: np.ndarray  # int32 [shard_num_samples]
    mt_state: bytes          # llm.c's 2520-byte mt19937_state


@dataclass
class TrainingState:
    num_processes: int
    process_rank: int
    step: int
    rng_state: int
    rng_state_last_update: int
    shard_idx: int
    sample_idx: int
    m: np.ndarray                 # f32 [shard_num_parameters]
    v: np.ndarray                 # f32 [shard_num_parameters]
    master: np.ndarray | None     # f32 [shard_num_parameters], only with master weights
    loader: LoaderState | None    # only when the train loader shuffles


def write_state(path, state):
    if state.loader is not None and len(state.loader.mt_state) != MT_STATE_BYTES:
        raise LlmcError(f"{path}: loader RNG state must be {MT_STATE_BYTES} bytes, given {len(state.loader.mt_state)}")
    header = make_header(STATE_MAGIC, STATE_VERSION)
    header[2] = state.num_processes
    header[3] = state.process_rank
    header[4] = int(state.master is not None)
    header[5] = int(state.loader is not None)
    header[10] = state.step
    raw = bytearray(header.astype("<i4").tobytes())
    struct.pack_into("<QQ", raw, 80, state.rng_state, state.rng_state_last_update)
    struct.pack_into("<QQ", raw, 120, state.shard_idx, state.sample_idx)
    with atomic_write(path) as f:
        f.write(raw)
        for arr in (state.m, state.v) + ((state.master,) if state.master is not None else ()):
            f.write(np.ascontiguousarray(arr, dtype="<f4").tobytes())
        if state.loader is not None:
            f.write(struct.pack("<Q", state.loader.shard_perm.size))
            f.write(np.ascontiguousarray(state.loader.shard_perm, dtype="<i4").tobytes())
            f.write(struct.pack("<Q", state.loader.sample_perm.size))
            f.write(np.ascontiguousarray(state.loader.sample_perm, dtype="<i4").tobytes())
            f.write(state.loader.mt_state)


def read_state(path, shard_num_parameters):
    """Reads a state file whose optimizer arrays hold `shard_num_parameters` floats each."""
    header, size = read_header(path, STATE_MAGIC, (STATE_VERSION,), what="training state file")
    use_master, shuffled = int(header[4]), int(header[5])
    for slot, value in (("use_master_weights", use_master), ("should_shuffle", shuffled)):
        if value not in (0, 1):
            raise LlmcError(f"{path}: header field {slot} must be 0 or 1, found {value}")
    n = shard_num_parameters
    arrays_end = HEADER_BYTES + 4 * n * (3 if use_master else 2)
    if size < arrays_end:
        raise LlmcError(f"{path}: expected at least {arrays_end} bytes for {n} optimizer parameters "
                        f"(master weights {use_master}), found {size}")
    raw = header.astype("<i4").tobytes()
    rng_state, rng_last = struct.unpack_from("<QQ", raw, 80)
    shard_idx, sample_idx = struct.unpack_from("<QQ", raw, 120)
    arrays = [np.fromfile(path, dtype="<f4", count=n, offset=HEADER_BYTES + 4 * n * k).astype(np.float32)
              for k in range(3 if use_master else 2)]
    with open(path, "rb") as f:
        f.seek(arrays_end)
        tail = f.read()
    loader, used = None, 0
    if shuffled:
        loader, used = _read_loader_state(path, tail, arrays_end)
    check_size(path, size, arrays_end + used, f"a state file with {n} optimizer parameters "
                                              f"(master weights {use_master}, shuffled loader {shuffled})")
    return TrainingState(num_processes=int(header[2]), process_rank=int(header[3]), step=int(header[10]),
                         rng_state=rng_state, rng_state_last_update=rng_last,
                         shard_idx=shard_idx, sample_idx=sample_idx, m=arrays[0], v=arrays[1],
                         master=arrays[2] if use_master else None, loader=loader)


def _read_loader_state(path, raw, start):
    """Parses the loader section `raw` (which begins at byte `start` of the file); returns (state, bytes used)."""
    pos = 0

    def take(nbytes, what):
        nonlocal pos
        if pos + nbytes > len(raw):
            raise LlmcError(f"{path}: file ends inside the loader state ({what}): expected at least "
                            f"{start + pos + nbytes} bytes, found {start + len(raw)}")
        chunk = raw[pos:pos + nbytes]
        pos += nbytes
        return chunk

    (num_shards,) = struct.unpack("<Q", take(8, "shard count"))
    shard_perm = np.frombuffer(take(4 * num_shards, "shard permutation"), dtype="<i4").astype(np.int32)
    (num_samples,) = struct.unpack("<Q", take(8, "sample count"))
    sample_perm = np.frombuffer(take(4 * num_samples, "sample permutation"), dtype="<i4").astype(np.int32)
    mt_state = take(MT_STATE_BYTES, "Mersenne Twister state")
    return LoaderState(shard_perm=shard_perm, sample_perm=sample_perm, mt_state=mt_state), pos


# ----------------------------------------------------------------------------
# debug state (gpt2_124M_debug_state.bin)

@dataclass
class DebugState:
    B: int
    T: int
    x: np.ndarray        # int32 (B, T)
    y: np.ndarray        # int32 (B, T)
    logits: np.ndarray   # f32 (B, T, V), unpadded
    loss: float
    grads: np.ndarray    # f32 [num_parameters], padded layout
    losses: list         # reference losses of the 10 training steps, [] when the file has none


def write_debug_state(path, x, y, logits, loss, grads, losses=()):
    """x, y: (B, T) ints; logits (B, T, V) f32; grads flat f32. Up to 10 reference losses go into header
    slots 5..14 (as f32 bits) with their count in slot 4: llm.c's reader ignores those slots."""
    B, T = x.shape
    if len(losses) > DEBUG_LOSS_SLOTS:
        raise LlmcError(f"{path}: at most {DEBUG_LOSS_SLOTS} reference losses fit the header, given {len(losses)}")
    header = make_header(DEBUG_MAGIC, DEBUG_VERSION)
    header[2], header[3] = B, T
    header[DEBUG_LOSS_COUNT_SLOT] = len(losses)
    loss_slots = slice(DEBUG_LOSS_COUNT_SLOT + 1, DEBUG_LOSS_COUNT_SLOT + 1 + len(losses))
    header[loss_slots] = np.asarray(losses, dtype=np.float32).view(np.int32)
    with atomic_write(path) as f:
        f.write(header.astype("<i4").tobytes())
        f.write(np.ascontiguousarray(x, dtype="<i4").tobytes())
        f.write(np.ascontiguousarray(y, dtype="<i4").tobytes())
        f.write(np.ascontiguousarray(logits, dtype="<f4").tobytes())
        f.write(np.float32(loss).astype("<f4").tobytes())
        f.write(np.ascontiguousarray(grads, dtype="<f4").tobytes())


def read_debug_state(path, config):
    header, size = read_header(path, DEBUG_MAGIC, (DEBUG_VERSION,), what="debug state file")
    B, T = int(header[2]), int(header[3])
    if B <= 0 or not 0 < T <= config.max_seq_len:
        raise LlmcError(f"{path}: expected batch size > 0 and 0 < T <= {config.max_seq_len}, found B={B} T={T}")
    V, BT = config.vocab_size, B * T
    check_size(path, size, HEADER_BYTES + 4 * (2 * BT + BT * V + 1 + config.num_parameters),
               f"a debug state with B={B} T={T} V={V} and {config.num_parameters} parameters")
    nlosses = int(header[DEBUG_LOSS_COUNT_SLOT])
    if not 0 <= nlosses <= DEBUG_LOSS_SLOTS:
        raise LlmcError(f"{path}: header slot {DEBUG_LOSS_COUNT_SLOT} (reference loss count) must be "
                        f"0..{DEBUG_LOSS_SLOTS}, found {nlosses}")
    losses = header[DEBUG_LOSS_COUNT_SLOT + 1:DEBUG_LOSS_COUNT_SLOT + 1 + nlosses].astype(np.int32).view(np.float32)
    ints = np.fromfile(path, dtype="<i4", count=2 * BT, offset=HEADER_BYTES).astype(np.int32)
    x, y = ints[:BT].reshape(B, T), ints[BT:].reshape(B, T)
    floats = np.fromfile(path, dtype="<f4", offset=HEADER_BYTES + 8 * BT)
    logits = floats[:BT * V].reshape(B, T, V)
    loss = float(floats[BT * V])
    grads = floats[BT * V + 1:]
    return DebugState(B=B, T=T, x=x, y=y, logits=logits, loss=loss, grads=grads, losses=[float(l) for l in losses])
