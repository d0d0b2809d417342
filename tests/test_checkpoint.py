"""Model, state and debug-state files: exact bytes and sizes, round trips, and one-line errors."""
import os
import struct
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from llmc_py import LlmcError
from llmc_py.checkpoint import (LoaderState, TrainingState, read_debug_state, read_model, read_model_header,
                                read_state, write_debug_state, write_model, write_state)
from llmc_py.config import GPT2Config, config_from_descriptor
from llmc_py.rand import MT19937, MT_STATE_BYTES, gpt2_random_init

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = GPT2Config(max_seq_len=8, vocab_size=10, padded_vocab_size=16, num_layers=2, num_heads=2, channels=4)


def tiny_params(seed=0):
    return np.random.default_rng(seed).standard_normal(TINY.num_parameters).astype(np.float32)


# ----------------------------------------------------------------------------
# configs and sizes

@pytest.mark.parametrize("descriptor,padded,unpadded", [
    ("d6", 30_357_504, 30_339_456), ("d12", 124_475_904, 124_439_808), ("d24", 354_871_296, 354_823_168),
    ("d36", 774_090_240, 774_030_080), ("d48", 1_557_686_400, 1_557_611_200)])
def test_parameter_counts(descriptor, padded, unpadded):
    config = config_from_descriptor(descriptor)
    assert config.num_parameters == padded
    C = config.channels
    assert padded - (config.padded_vocab_size - config.vocab_size) * C == unpadded


def test_d12_tensor_offsets_match_llmc():
    offsets = config_from_descriptor("gpt2:d12").param_offsets()
    assert offsets == [0, 38_633_472, 39_419_904, 39_429_120, 39_438_336, 60_672_000, 60_699_648, 67_777_536,
                       67_786_752, 67_795_968, 67_805_184, 96_116_736, 96_153_600, 124_465_152, 124_474_368,
                       124_475_136]


def test_descriptors():
    c = config_from_descriptor("gpt3:c768")
    assert (c.max_seq_len, c.num_layers, c.num_heads, c.channels) == (2048, 12, 12, 768)
    c = config_from_descriptor("gpt3:c1536")
    assert (c.num_layers, c.num_heads) == (24, 16)
    with pytest.raises(LlmcError, match=r"-e d13: expected a \.bin checkpoint or a model descriptor"):
        config_from_descriptor("d13")
    with pytest.raises(LlmcError, match="channels 5140 is not a multiple of the head size 128"):
        config_from_descriptor("gpt3:c5140")


# ----------------------------------------------------------------------------
# model files

def test_model_fp32_bytes(tmp_path):
    params = tiny_params()
    path = tmp_path / "m.bin"
    write_model(path, TINY, params, 3)
    raw = path.read_bytes()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert list(header[:8]) == [20240326, 3, 8, 10, 2, 2, 4, 16]
    assert not header[8:].any()
    assert len(raw) == 1024 + 4 * TINY.num_parameters
    assert np.array_equal(np.frombuffer(raw[1024:], dtype="<f4"), params)
    config, back, version = read_model(path)
    assert config == TINY and version == 3 and np.array_equal(back, params)


def test_model_bf16_is_round_to_nearest_even(tmp_path):
    # values just around a bf16 halfway point: 1 + 2^-8 is a tie (rounds to even 1.0), 1 + 3*2^-8 rounds up
    params = tiny_params()
    params[:4] = [1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8 + 2 ** -20), 3.0]
    path = tmp_path / "m_bf16.bin"
    write_model(path, TINY, params, 5)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 2 * TINY.num_parameters
    bits = np.frombuffer(raw[1024:], dtype="<u2")
    assert list(bits[:4]) == [0x3F80, 0x3F82, 0xBF81, 0x4040]
    # independent RNE: add 0x7FFF plus the lowest kept bit, then truncate
    u = params.view(np.uint32).astype(np.uint64)
    expected = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    assert np.array_equal(bits, expected)
    _, back, version = read_model(path)
    assert version == 5 and back.dtype == ml_dtypes.bfloat16
    assert np.array_equal(back.view(np.uint16), bits)


@pytest.mark.parametrize("corrupt,message", [
    (lambda raw: raw[:-4], r"expected 3392 bytes for a version 3 model with L=2 C=4 NH=2 maxT=8 Vp=16, found 3388"),
    (lambda raw: raw[:100], r"expected a 1024-byte model file header, found a 100-byte file"),
    (lambda raw: struct.pack("<i", 1234) + raw[4:], r"bad magic: expected 20240326 \(model file\), found 1234"),
    (lambda raw: raw[:4] + struct.pack("<i", 4) + raw[8:], r"unsupported model file version: expected 3 or 5, found 4"),
    (lambda raw: raw[:16] + struct.pack("<i", 3) + raw[20:], r"expected 4368 bytes for a version 3 model with L=3 C=4 NH=2 maxT=8 Vp=16, found 3392"),
    (lambda raw: raw[:20] + struct.pack("<i", 3) + raw[24:], r"channels 4 is not divisible by num_heads 3"),
    (lambda raw: raw[:28] + struct.pack("<i", 8) + raw[32:], r"padded_vocab_size 8 is smaller than vocab_size 10"),
])
def test_model_errors(tmp_path, corrupt, message):
    good = tmp_path / "good.bin"
    write_model(good, TINY, tiny_params(), 3)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(corrupt(good.read_bytes()))
    with pytest.raises(LlmcError, match=message) as e:
        read_model(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_model_missing_and_version_restriction(tmp_path):
    with pytest.raises(LlmcError, match="nope.bin: model file not found"):
        read_model(tmp_path / "nope.bin")
    path = tmp_path / "m.bin"
    write_model(path, TINY, tiny_params(), 5)
    with pytest.raises(LlmcError, match="expected 3, found 5"):
        read_model_header(path, versions=(3,))


def test_write_is_atomic(tmp_path):
    path = tmp_path / "m.bin"
    write_model(path, TINY, tiny_params(1), 3)
    before = path.read_bytes()
    with pytest.raises(LlmcError, match="expected 592 parameters, given 3"):
        write_model(path, TINY, np.zeros(3, np.float32), 3)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.bin"]  # no temp file left behind


# ----------------------------------------------------------------------------
# training state files

def make_state(n, master=True, loader=True):
    rng = np.random.default_rng(3)
    mt = MT19937(43)
    mt.randint32(5)
    return TrainingState(
        num_processes=2, process_rank=1, step=1234, rng_state=0xFEDCBA9876543210, rng_state_last_update=2 ** 63 + 7,
        shard_idx=3, sample_idx=17, m=rng.standard_normal(n).astype(np.float32),
        v=rng.random(n).astype(np.float32), master=rng.standard_normal(n).astype(np.float32) if master else None,
        loader=LoaderState(np.array([2, 0, 1], np.int32), np.arange(5, dtype=np.int32)[::-1].copy(),
                           mt.state_bytes()) if loader else None)


def test_state_bytes(tmp_path):
    n = 100
    state = make_state(n)
    path = tmp_path / "state_00001234_00001.bin"
    write_state(path, state)
    raw = path.read_bytes()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert list(header[:6]) == [20240527, 1, 2, 1, 1, 1] and header[10] == 1234
    assert struct.unpack_from("<QQQQ", raw, 80) == (0xFEDCBA9876543210, 2 ** 63 + 7, 0, 0)
    assert struct.unpack_from("<QQ", raw, 120) == (3, 17)
    assert not np.delete(header, [0, 1, 2, 3, 4, 5, 10, 20, 21, 22, 23, 30, 31, 32, 33]).any()
    loader_bytes = 8 + 3 * 4 + 8 + 5 * 4 + MT_STATE_BYTES
    assert len(raw) == 1024 + 3 * 4 * n + loader_bytes
    assert MT_STATE_BYTES == 2520
    tail = raw[1024 + 12 * n:]
    assert struct.unpack_from("<Q3iQ", tail, 0) == (3, 2, 0, 1, 5)
    mt_raw = tail[-MT_STATE_BYTES:]
    assert struct.unpack_from("<Q", mt_raw, 0) == (0,)  # llm.c leaves seed_ uninitialized; we write 0
    assert struct.unpack_from("<II", mt_raw, 2512) == (0, 0x9908B0DF)

    back = read_state(path, n)
    assert (back.num_processes, back.process_rank, back.step) == (2, 1, 1234)
    assert (back.rng_state, back.rng_state_last_update, back.shard_idx, back.sample_idx) == \
           (state.rng_state, state.rng_state_last_update, 3, 17)
    for name in ("m", "v", "master"):
        assert np.array_equal(getattr(back, name), getattr(state, name))
    assert np.array_equal(back.loader.shard_perm, [2, 0, 1]) and np.array_equal(back.loader.sample_perm, [4, 3, 2, 1, 0])
    # the restored Mersenne Twister continues exactly where the saved one stood
    a = MT19937.from_state_bytes(back.loader.mt_state)
    b = MT19937(43)
    b.randint32(5)
    assert np.array_equal(a.randint32(1000), b.randint32(1000))


def test_state_without_master_and_loader(tmp_path):
    path = tmp_path / "s.bin"
    write_state(path, make_state(10, master=False, loader=False))
    assert path.stat().st_size == 1024 + 2 * 4 * 10
    back = read_state(path, 10)
    assert back.master is None and back.loader is None


def test_state_d12_size_matches_llmc(tmp_path):
    # spec: 124M, master weights, 1 shard of 74 samples: 1,493,714,708 bytes. Checked without writing 1.5 GB:
    # the same arithmetic on a small state, then scaled.
    n = 124_475_904
    loader_bytes = 8 + 4 + 8 + 74 * 4 + MT_STATE_BYTES
    assert 1024 + 3 * 4 * n + loader_bytes == 1_493_714_708
    path = tmp_path / "s.bin"
    state = make_state(7)
    state.loader = LoaderState(np.zeros(1, np.int32), np.arange(74, dtype=np.int32), MT19937(42).state_bytes())
    write_state(path, state)
    assert path.stat().st_size == 1024 + 3 * 4 * 7 + loader_bytes


@pytest.mark.parametrize("corrupt,message", [
    (lambda raw: raw[:-1], r"file ends inside the loader state \(Mersenne Twister state\)"),
    (lambda raw: raw + b"\0", r"expected 3\d+ bytes for a state file with 20 optimizer parameters"),
    (lambda raw: raw[:500], r"expected a 1024-byte training state file header"),
    (lambda raw: struct.pack("<i", 20240326) + raw[4:], r"bad magic: expected 20240527"),
    (lambda raw: raw[:4] + struct.pack("<i", 2) + raw[8:], r"unsupported training state file version: expected 1, found 2"),
    (lambda raw: raw[:16] + struct.pack("<i", 7) + raw[20:], r"use_master_weights must be 0 or 1, found 7"),
    (lambda raw: raw[:1100], r"expected at least 1264 bytes for 20 optimizer parameters"),
])
def test_state_errors(tmp_path, corrupt, message):
    good = tmp_path / "good.bin"
    write_state(good, make_state(20))
    bad = tmp_path / "bad.bin"
    bad.write_bytes(corrupt(good.read_bytes()))
    with pytest.raises(LlmcError, match=message):
        read_state(bad, 20)


# ----------------------------------------------------------------------------
# debug state

def test_debug_state_round_trip(tmp_path):
    B, T, V = 2, 3, TINY.vocab_size
    rng = np.random.default_rng(5)
    x = rng.integers(0, V, (B, T)).astype(np.int32)
    y = rng.integers(0, V, (B, T)).astype(np.int32)
    logits = rng.standard_normal((B, T, V)).astype(np.float32)
    grads = rng.standard_normal(TINY.num_parameters).astype(np.float32)
    losses = [10.5, 9.25, 8.125]
    path = tmp_path / "debug.bin"
    write_debug_state(path, x, y, logits, 2.5, grads, losses)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 4 * (2 * B * T + B * T * V + 1 + TINY.num_parameters)
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert list(header[:5]) == [20240327, 2, B, T, 3]
    assert list(header[5:8].view("<f4")) == losses and not header[8:].any()
    back = read_debug_state(path, TINY)
    assert (back.B, back.T, back.loss, back.losses) == (B, T, 2.5, losses)
    assert np.array_equal(back.x, x) and np.array_equal(back.y, y)
    assert np.array_equal(back.logits, logits) and np.array_equal(back.grads, grads)
    write_debug_state(path, x, y, logits, 2.5, grads)
    assert read_debug_state(path, TINY).losses == []


def test_debug_state_errors(tmp_path):
    B, T, V = 1, 2, TINY.vocab_size
    path = tmp_path / "debug.bin"
    write_debug_state(path, np.zeros((B, T), np.int32), np.zeros((B, T), np.int32), np.zeros((B, T, V), np.float32),
                      0.0, np.zeros(TINY.num_parameters, np.float32))
    good = path.read_bytes()
    path.write_bytes(good[:-4])
    with pytest.raises(LlmcError, match=r"debug.bin: expected \d+ bytes for a debug state with B=1 T=2 V=10"):
        read_debug_state(path, TINY)
    path.write_bytes(good[:12] + struct.pack("<i", 9) + good[16:])
    with pytest.raises(LlmcError, match=r"expected batch size > 0 and 0 < T <= 8, found B=1 T=9"):
        read_debug_state(path, TINY)
    path.write_bytes(good[:4] + struct.pack("<i", 1) + good[8:])
    with pytest.raises(LlmcError, match="unsupported debug state file version: expected 2, found 1"):
        read_debug_state(path, TINY)


# ----------------------------------------------------------------------------
# the d12 files train_gpt2.py writes

def test_d12_file_sizes(d12_dir):
    assert (d12_dir / "gpt2_d12.bin").stat().st_size == 497_904_640
    assert (d12_dir / "gpt2_d12_bf16.bin").stat().st_size == 248_952_832
    assert (d12_dir / "gpt2_d12_debug_state.bin").stat().st_size == 549_369_860
    assert (d12_dir / "gpt2_tokenizer.bin").stat().st_size == 372_108


def test_d12_init_identical_to_train_gpt2(d12_dir):
    """llmc_py.rand's -e d12 init (NumPy) and train_gpt2.py's (torch module init) agree bit for bit."""
    config, params, version = read_model(d12_dir / "gpt2_d12.bin")
    assert version == 3 and config == config_from_descriptor("d12")
    ours = gpt2_random_init(config)
    assert ours.view(np.uint32).tobytes() == params.view(np.uint32).tobytes()
    # spot checks of the layout: layernorm weights 1, biases 0, padded vocab rows 0, std per tensor
    views = dict(zip(range(16), np.split(params, config.param_offsets()[1:])))
    assert (views[2] == 1).all() and (views[14] == 1).all() and not views[3].any() and not views[5].any()
    assert not views[0].reshape(config.padded_vocab_size, -1)[config.vocab_size:].any()
    assert abs(views[4].std() - 0.02) < 2e-4 and abs(views[6].std() - 0.02 / np.sqrt(24)) < 5e-5
    _, bf16, version = read_model(d12_dir / "gpt2_d12_bf16.bin")
    assert version == 5 and np.array_equal(bf16, params.astype(ml_dtypes.bfloat16))


def test_d12_debug_state_batch(d12_dir):
    config = config_from_descriptor("d12")
    state = read_debug_state(d12_dir / "gpt2_d12_debug_state.bin", config)
    assert (state.B, state.T) == (4, 64)
    assert list(state.x[0, :8]) == [50256, 5962, 22307, 25, 198, 8421, 356, 5120]
    assert np.array_equal(state.y.reshape(-1)[:-1], state.x.reshape(-1)[1:])
    assert len(state.losses) == 10 and abs(state.losses[0] - np.log(50257)) < 0.3
    assert all(a > b for a, b in zip(state.losses[:3], state.losses[1:3]))  # the first steps learn
    assert abs(state.loss - state.losses[0]) < 1e-5
    # the loss in the file is the cross-entropy of the stored logits
    logits = state.logits.astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, state.y[..., None], -1).mean()
    assert abs(ce - state.loss) < 1e-5


def test_train_gpt2_offline_pretrained_error(gpt2_tiktoken, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "train_gpt2.py"), "--model", "gpt2",
                           "--write_tensors", "0", "--num_iterations", "0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "--model gpt2: cannot load pretrained weights" in proc.stderr
    assert "Traceback" not in proc.stderr
