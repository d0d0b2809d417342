"""The training loop's helpers: DataLoader (spec 6.1/6.2, resume 2.4), LR schedules (9.5), outlier
detector (9.7), sampler (12), main.log (8.4) and MFU (9.9).

Loader tests use tiny synthetic shards whose token values encode (file, position): file f holds
1000*f + p at position p, so every batch says exactly where it was read from. Expected shuffles come
from torch's CPU generator, independently of llmc_py.rand: torch.randint(0, n) on CPU takes one raw 32-bit
Mersenne-Twister draw and returns draw % n, which is exactly llm.c's `randint32() % (i+1)`.
"""
import math
import re

import numpy as np
import pytest
import torch

from data_common import write_datafile
from llmc_py import LlmcError
from llmc_py.checkpoint import LoaderState
from llmc_py.dataloader import DataLoader
from llmc_py.logger import Logger
from llmc_py.mfu import describe_peak, estimate_mfu, flops_per_token, format_mfu, get_flops_promised
from llmc_py.outlier_detector import OutlierDetector
from llmc_py.rand import random_f32
from llmc_py.sampler import SAMPLE_RNG_SEED, sample_softmax
from llmc_py.schedulers import LearningRateScheduler

B, T, P = 2, 4, 2
BT, PBT = B * T, P * B * T
# samples per process: (81-1)//16 = 5, (55-1)//16 = 3 (6 leftover tokens), (65-1)//16 = 4
SHARD_SIZES = (PBT * 5 + 1, PBT * 3 + 7, PBT * 4 + 1)
SHARD_SAMPLES = (5, 3, 4)


def make_shards(folder, sizes=SHARD_SIZES):
    folder.mkdir(exist_ok=True)
    tokens = []
    for f, n in enumerate(sizes):
        toks = 1000 * f + np.arange(n)
        write_datafile(folder / f"shard_{f:03d}.bin", toks)
        tokens.append(toks)
    return str(folder / "shard_*.bin"), tokens


@pytest.fixture
def shards(tmp_path):
    return make_shards(tmp_path / "data")


def where(inputs, targets, rank, tokens):
    """(file, global sample index) a batch was read from; checks the whole slice against the shard."""
    v = int(inputs[0, 0])
    f, p = divmod(v, 1000)
    k, rem = divmod(p - rank * BT, PBT)
    assert rem == 0, f"batch starts at token {p}, not at a rank-{rank} slice"
    start = k * PBT + rank * BT
    assert inputs.dtype == targets.dtype == np.int32 and inputs.shape == targets.shape == (B, T)
    np.testing.assert_array_equal(inputs.reshape(-1), tokens[f][start:start + BT])
    np.testing.assert_array_equal(targets.reshape(-1), tokens[f][start + 1:start + BT + 1])
    return f, k


def torch_permutation(a, gen):
    """Fisher-Yates, descending, j = u32 % (i+1), with draws from torch's generator."""
    a = list(a)
    for i in range(len(a) - 1, 0, -1):
        j = int(torch.randint(0, i + 1, (1,), generator=gen))
        a[i], a[j] = a[j], a[i]
    return a


def expected_shuffled(rank, epochs, samples=SHARD_SAMPLES):
    """The (file, sample) sequence of a shuffled loader: per epoch the shard order is permuted further
    (never reset to identity), then each shard's samples get a fresh permutation when it is opened."""
    gen = torch.Generator().manual_seed(42 + rank)
    order, seq = list(range(len(samples))), []
    for _ in range(epochs):
        order = torch_permutation(order, gen)
        for f in order:
            seq += [(f, k) for k in torch_permutation(range(samples[f]), gen)]
    return seq


def run(loader, n, rank, tokens):
    return [where(*loader.next_batch(), rank, tokens) for _ in range(n)]


# ----------------------------------------------------------------------------
# DataLoader: sequential (val loader)

def test_sequential_slices_and_wrap(shards):
    pattern, tokens = shards
    loaders = [DataLoader(pattern, B, T, r, P, False) for r in range(P)]
    epoch = sum(SHARD_SAMPLES)
    for loader in loaders:
        assert loader.num_tokens == sum(SHARD_SIZES) == 81 + 55 + 65
        assert loader.shard_num_samples == 5
        assert (loader.current_shard_idx, loader.current_sample_idx) == (0, 0)
        assert loader.state() is None
    expected = [(f, k) for f, n in enumerate(SHARD_SAMPLES) for k in range(n)]
    for step in range(epoch + 3):
        (x0, y0), (x1, y1) = [(x.copy(), y.copy()) for x, y in (ld.next_batch() for ld in loaders)]
        assert where(x0, y0, 0, tokens) == where(x1, y1, 1, tokens) == expected[step % epoch]
        # rank 1's slice follows rank 0's, overlapping by one token: rank 0's last target is rank 1's first input
        assert y0[-1, -1] == x1[0, 0]
        f, k = expected[step % epoch]
        np.testing.assert_array_equal(np.concatenate([x0.reshape(-1), x1.reshape(-1), y1[-1, -1:]]),
                                      tokens[f][k * PBT:(k + 1) * PBT + 1])
    # after wrapping: 3 batches into epoch 2, shard 0
    assert (loaders[0].current_shard_idx, loaders[0].current_sample_idx) == (0, 3)
    loaders[0].reset()
    assert where(*loaders[0].next_batch(), 0, tokens) == (0, 0)


def test_leftover_tokens_unused(shards):
    pattern, tokens = shards
    loader = DataLoader(pattern, B, T, 1, P, False)
    seen = run(loader, sum(SHARD_SAMPLES), 1, tokens)
    # shard 1 holds 55 tokens: the last sample read by rank 1 covers positions 2*16+8 .. 2*16+16
    assert [k for f, k in seen if f == 1] == [0, 1, 2]
    assert int(loader.targets[-1, -1]) == 1000 * 2 + 3 * PBT + BT + BT  # shard 2, sample 3: rank 1's last target


def test_tinyshakespeare_samples(tinyshakespeare_dir):
    # spec 17.6: B=4, T=1024, 1 GPU -> 74 train samples, 7 val samples
    train = DataLoader(str(tinyshakespeare_dir / "tiny_shakespeare_train.bin"), 4, 1024, 0, 1, True)
    val = DataLoader(str(tinyshakespeare_dir / "tiny_shakespeare_val.bin"), 4, 1024, 0, 1, False)
    assert (train.num_tokens, train.shard_num_samples, len(train.sample_perm)) == (305260, 74, 74)
    assert (val.num_tokens, val.shard_num_samples) == (32768, 7)
    x, y = val.next_batch()
    assert x[0, :4].tolist() == [50256, 5962, 22307, 25] and y[0, :3].tolist() == [5962, 22307, 25]


# ----------------------------------------------------------------------------
# DataLoader: shuffled (train loader)

def test_first_permutations_by_hand(shards):
    # MT19937(42)'s first raw draws (torch.manual_seed(42); identical to numpy's init_genrand seeding)
    draws = np.random.RandomState(42).randint(0, 2**32, size=2, dtype=np.uint32).tolist()
    assert draws == [1608637542, 3421126067]
    # shard order of 3: i=2, j = 1608637542 % 3 = 0 -> swap 0,2; i=1, j = 3421126067 % 2 = 1 -> stays
    assert (draws[0] % 3, draws[1] % 2) == (0, 1)
    pattern, tokens = shards
    loader = DataLoader(pattern, B, T, 0, P, True)
    assert loader.shard_perm.tolist() == [2, 1, 0]
    assert loader.sample_perm.tolist() == [2, 3, 1, 0]  # shard file 2 has 4 samples
    assert loader.shard_num_samples == 4
    assert run(loader, 5, 0, tokens) == [(2, 2), (2, 3), (2, 1), (2, 0), (1, 1)]
    rank1 = DataLoader(pattern, B, T, 1, P, True)  # seeded 43: its own orders
    assert rank1.shard_perm.tolist() == [2, 0, 1]
    assert rank1.sample_perm.tolist() == [0, 2, 1, 3]


@pytest.mark.parametrize("rank", [0, 1])
def test_shuffle_matches_torch_over_epochs(shards, rank):
    pattern, tokens = shards
    loader = DataLoader(pattern, B, T, rank, P, True)
    epochs = 4
    epoch = sum(SHARD_SAMPLES)
    seen = run(loader, epochs * epoch, rank, tokens)
    assert seen == expected_shuffled(rank, epochs)
    for e in range(epochs):  # every epoch covers every sample of every shard exactly once
        assert sorted(seen[e * epoch:(e + 1) * epoch]) == [(f, k) for f, n in enumerate(SHARD_SAMPLES)
                                                           for k in range(n)]


def test_shard_order_composes(tmp_path):
    """Two 1-sample shards: each epoch draws once, and a draw d with d % 2 == 0 swaps the *current* order
    (a fresh permutation of the identity would give [1, 0] after every such draw)."""
    sizes = (PBT + 1, PBT + 1)
    pattern, tokens = make_shards(tmp_path / "two", sizes)
    loader = DataLoader(pattern, B, T, 0, P, True)
    draws = np.random.RandomState(42).randint(0, 2**32, size=8, dtype=np.uint32).tolist()
    # each epoch: 1 draw for the shard order, then 0 draws per 1-sample shard
    order, orders = [0, 1], []
    for d in draws[:4]:
        if d % 2 == 0:
            order = order[::-1]
        orders.append(order)
    seen = run(loader, 8, 0, tokens)
    assert [f for f, _ in seen] == [f for o in orders for f in o]


def test_reset_reshuffles(shards):
    pattern, tokens = shards
    loader = DataLoader(pattern, B, T, 0, P, True)
    run(loader, 2, 0, tokens)
    loader.reset()  # a new epoch starts here: next shard-order draw, then the first shard's samples
    gen = torch.Generator().manual_seed(42)
    order = torch_permutation(range(3), gen)
    torch_permutation(range(SHARD_SAMPLES[order[0]]), gen)  # drawn at init
    order = torch_permutation(order, gen)
    samples = torch_permutation(range(SHARD_SAMPLES[order[0]]), gen)
    assert loader.shard_perm.tolist() == order and loader.sample_perm.tolist() == samples
    assert run(loader, 2, 0, tokens) == [(order[0], samples[0]), (order[0], samples[1])]


# ----------------------------------------------------------------------------
# DataLoader: resume (spec 2.4)

@pytest.mark.parametrize("k", [1, 4, 5, 7, 12, 13, 30])
@pytest.mark.parametrize("shuffle", [True, False])
def test_resume_equals_uninterrupted(shards, k, shuffle):
    # k = 4: end of the first shard; 5: first batch of the second; 12: end of the epoch; 13: into epoch 2
    pattern, tokens = shards
    a = DataLoader(pattern, B, T, 1, P, shuffle)
    run(a, k, 1, tokens)
    shard_idx, sample_idx, state = a.current_shard_idx, a.current_sample_idx, a.state()
    if shuffle:
        state = LoaderState(state.shard_perm.copy(), state.sample_perm.copy(), bytes(state.mt_state))
    b = DataLoader(pattern, B, T, 1, P, shuffle)
    run(b, 3, 1, tokens)  # whatever b did before must not matter
    b.resume(shard_idx, sample_idx, state)
    assert (b.current_shard_idx, b.current_sample_idx) == (shard_idx, sample_idx)
    assert run(b, 40, 1, tokens) == run(a, 40, 1, tokens)


def test_resume_does_not_redraw_sample_order(shards):
    pattern, tokens = shards
    a = DataLoader(pattern, B, T, 0, P, True)
    run(a, 2, 0, tokens)
    state = a.state()
    b = DataLoader(pattern, B, T, 0, P, True)
    b.resume(0, 2, state)
    np.testing.assert_array_equal(b.sample_perm, state.sample_perm)
    assert b.state().mt_state == state.mt_state
    assert run(b, 2, 0, tokens) == [(2, 1), (2, 0)]


def test_resume_shard_count_mismatch(tmp_path):
    pattern3, _ = make_shards(tmp_path / "three")
    state = DataLoader(pattern3, B, T, 0, P, True).state()
    pattern2, _ = make_shards(tmp_path / "two", SHARD_SIZES[:2])
    loader = DataLoader(pattern2, B, T, 0, P, True)
    with pytest.raises(LlmcError, match=rf"^{re.escape(pattern2)}: the training state was saved with 3 shards, "
                                        rf"the pattern now matches 2$"):
        loader.resume(0, 1, state)


def test_resume_sample_count_mismatch(shards):
    pattern, _ = shards
    state = DataLoader(pattern, B, T, 0, P, True).state()  # at shard file 2: 4 samples of 16 tokens
    loader = DataLoader(pattern, B, T, 0, 1, True)          # P = 1: 8 samples of 8 tokens
    path = pattern.replace("*", "002")
    with pytest.raises(LlmcError, match=rf"^{re.escape(path)}: the training state was saved with 4 samples per process in "
                                        rf"this shard, it now holds 8 \(B=2, T=4, P=1\)$"):
        loader.resume(0, 1, state)
    with pytest.raises(LlmcError, match=rf"^{re.escape(pattern)}: cannot resume at shard index 3: expected 0\.\.2"):
        loader.resume(3, 0, None)
    with pytest.raises(LlmcError, match=r"shard_000\.bin: cannot resume at sample 11: the shard holds 10 samples"):
        loader.resume(0, 11, None)
    assert loader.should_shuffle and loader.state().sample_perm.tolist() != []  # failed resumes change nothing


# ----------------------------------------------------------------------------
# DataLoader: errors

def test_shard_too_small(tmp_path):
    pattern, _ = make_shards(tmp_path / "d", (PBT * 2 + 1, PBT))
    path = pattern.replace("*", "001")
    with pytest.raises(LlmcError, match=rf"^{re.escape(path)}: shard too small: expected at least B\*T\*P\+1 = 17 tokens "
                                        rf"\(B=2, T=4, P=2\), found 16$"):
        DataLoader(pattern, B, T, 0, P, False)
    DataLoader(pattern, B, T, 0, 1, False)  # one process needs only 9


def test_no_matching_shards(tmp_path):
    pattern = str(tmp_path / "nothing_*.bin")
    with pytest.raises(LlmcError, match=rf"^{re.escape(pattern)}: no files match the data shard pattern$"):
        DataLoader(pattern, B, T, 0, 1, True)


def test_bad_shard_rejected_at_init(shards, tmp_path):
    pattern, _ = shards
    bad = pattern.replace("*", "001")
    with open(bad, "r+b") as f:
        f.write((20240801).to_bytes(4, "little"))
    with pytest.raises(LlmcError, match=rf"^{re.escape(bad)}: bad magic: expected 20240520 \(token shard\), found 20240801$"):
        DataLoader(pattern, B, T, 0, P, False)


# ----------------------------------------------------------------------------
# LR schedules (spec 9.5)

def reference_lr(kind, step, lr0, W, N, q):
    """9.5's formulas in float64."""
    min_lr = lr0 * q
    if kind == "constant":
        return lr0
    if step < W:
        return lr0 * (step + 1) / W
    if kind == "cosine":
        r = (step - W) / (N - W)
        return min_lr + 0.5 * (1 + math.cos(math.pi * r)) * (lr0 - min_lr)
    if kind == "linear":
        r = (step - W) / (N - W)
        return lr0 - r * (lr0 - min_lr)
    D = int(0.8 * N)
    if step < D:
        return lr0
    r = (step - D) / (N - D)
    return min_lr + (1 - math.sqrt(r)) * (lr0 - min_lr)


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant", "wsd"])
@pytest.mark.parametrize("W,N,q", [(10, 100, 0.1), (0, 37, 0.0), (5, 7, 0.5), (3, 50, 1.0)])
def test_schedules_follow_formulas(kind, W, N, q):
    lr0 = 6e-4
    sched = LearningRateScheduler(kind, lr0, W, N, q)
    for step in range(N + 1):
        lr = sched.get(step)
        assert lr == float(np.float32(lr))  # computed in f32
        # f32 rounding: a few ulps of lr0 (the decay subtracts from lr0, so small values keep lr0's ulp)
        assert lr == pytest.approx(reference_lr(kind, step, lr0, W, N, q), rel=1e-6, abs=1e-6 * lr0)


def test_schedule_values():
    lr0, q = np.float32(6e-4), np.float32(0.1)
    cos = LearningRateScheduler("cosine", 6e-4, 10, 100, 0.1)
    assert cos.get(0) == float(lr0 * np.float32(1) / np.float32(10))   # 6e-5
    assert cos.get(9) == float(lr0) and cos.get(10) == float(lr0)      # end of warmup, r = 0
    assert cos.get(55) == pytest.approx(3.3e-4, rel=1e-6)              # r = 0.5: halfway to min_lr
    assert cos.get(100) == pytest.approx(6e-5, rel=1e-6)               # r = 1: min_lr
    lin = LearningRateScheduler("linear", 6e-4, 10, 100, 0.1)
    assert lin.get(55) == pytest.approx(3.3e-4, rel=1e-6)
    assert lin.get(100) == float(lr0 - np.float32(1) * (lr0 - lr0 * q))
    const = LearningRateScheduler("constant", 6e-4, 10, 100, 0.1)
    assert {const.get(s) for s in (0, 5, 50, 100)} == {float(lr0)}
    # wsd: D = int(0.8f * 100) = 80; constant until then, then 1 - sqrt(r) down to min_lr
    wsd = LearningRateScheduler("wsd", 6e-4, 10, 100, 0.1)
    assert wsd.get(4) == float(lr0 * (np.float32(5) / np.float32(10)))
    assert wsd.get(79) == wsd.get(80) == float(lr0)
    assert wsd.get(85) == pytest.approx(6e-5 + 0.5 * 5.4e-4, rel=1e-6)   # r = 0.25, sqrt = 0.5
    assert wsd.get(100) == pytest.approx(6e-5, rel=1e-6)
    wsd7 = LearningRateScheduler("wsd", 1.0, 0, 7, 0.0)                 # D = int(5.6) = 5
    assert [round(wsd7.get(s), 6) for s in range(8)] == [1, 1, 1, 1, 1, 1, round(1 - math.sqrt(0.5), 6), 0]


def test_schedule_errors():
    with pytest.raises(LlmcError, match=r"^-k cosin: unknown learning rate schedule: "
                                        r"expected one of cosine, linear, constant, wsd$"):
        LearningRateScheduler("cosin", 3e-4, 0, 10, 1.0)
    with pytest.raises(LlmcError, match=r"^-k cosine: step 11 is outside the decay phase 0\.\.10"):
        LearningRateScheduler("cosine", 3e-4, 0, 10, 1.0).get(11)


# ----------------------------------------------------------------------------
# outlier detector (spec 9.7)

@pytest.mark.parametrize("window", [128, 8])
def test_outlier_detector_matches_numpy(window):
    rng = np.random.default_rng(0)
    xs = rng.normal(3.0, 0.5, 3 * window + 17) + np.linspace(0, 2, 3 * window + 17)
    xs[window + 5] = 40.0  # an outlier
    det = OutlierDetector(window)
    for i, x in enumerate(xs):
        z = det.update(x)
        if i < window:
            assert math.isnan(z)
            continue
        w = xs[i - window + 1:i + 1]  # the window includes the new value
        assert z == pytest.approx((x - w.mean()) / w.std(), rel=1e-9, abs=1e-9)
    assert OutlierDetector().window == 128


def test_outlier_detector_constant_window():
    det = OutlierDetector(4)
    assert [det.update(2.5) for _ in range(6)][4:] == [0.0, 0.0]
    det = OutlierDetector(2)
    zs = [det.update(x) for x in (1.0, 3.0, 5.0)]
    assert math.isnan(zs[1]) and zs[2] == 1.0  # window [3, 5]: mean 4, std 1


# ----------------------------------------------------------------------------
# sampler (spec 12)

def sample_loop(logits, coin):
    """llm.c's sample_softmax, one element at a time."""
    norm = 0.0
    for v in logits:
        norm += float(np.float32(math.exp(float(v))))
    coin = np.float32(float(np.float32(coin)) * norm)
    cdf = np.float32(0.0)
    for i, v in enumerate(logits):
        cdf = np.float32(cdf + np.float32(math.exp(float(v))))
        if coin < cdf:
            return i
    return len(logits) - 1


def test_sampler_matches_loop():
    assert SAMPLE_RNG_SEED == 1337
    rng = np.random.default_rng(1)
    state = SAMPLE_RNG_SEED
    coins = []
    for _ in range(6):
        coin, state = random_f32(state)
        coins.append(coin)
    coins += [0.0, 0.5, 1.0 - 2**-24]
    for V, scale in ((1000, 3.0), (5003, 1.0), (50257, 4.0)):
        logits = (rng.standard_normal(V) * scale).astype(np.float32)
        for coin in coins:
            assert sample_softmax(logits, coin) == sample_loop(logits, coin)


def test_sampler_edges():
    assert sample_softmax(np.array([0.0, 0.0], np.float32), 1.0) == 1           # no coin < cdf: fallback V-1
    assert sample_softmax(np.array([0.0, np.nan, 0.0], np.float32), 0.2) == 2   # NaN poisons the walk: V-1
    assert sample_softmax(np.array([-1e9, 5.0, -1e9], np.float32), 0.999) == 1
    assert sample_softmax(np.array([0.0, 0.0, 0.0, 0.0], np.float32), 0.5) == 2  # cdf 1,2,3,4 vs coin 2.0


def test_float32_cumsum_is_sequential():
    x = np.random.default_rng(2).standard_normal(20000).astype(np.float32) ** 2
    acc, seq = np.float32(0), np.empty_like(x)
    for i, v in enumerate(x):
        acc = np.float32(acc + v)
        seq[i] = acc
    np.testing.assert_array_equal(np.cumsum(x, dtype=np.float32), seq)


# ----------------------------------------------------------------------------
# main.log (spec 8.4)

def test_logger_lines(tmp_path):
    log = tmp_path / "main.log"
    log.write_text("old run\n")
    logger = Logger(str(tmp_path), 0)
    assert log.read_bytes() == b""  # a fresh run starts an empty log
    logger.log_val(0, 4.283527)
    logger.log_eval(0, 0.2955)
    logger.log_train(0, 1.00005, 3e-4, 1.2345)   # 1.00005 in f32 is 1.0000499..., so 1.0000
    logger.log_train(1, 10.987530, 6e-05, 12.0)
    assert log.read_bytes() == (b"s:0 tel:4.2835\n"
                                b"s:0 eval:0.2955\n"
                                b"s:0 trl:1.0000 lr:0.000300 norm:1.23\n"
                                b"s:1 trl:10.9875 lr:0.000060 norm:12.00\n")
    logger.log_train(2, float("nan"), 6e-05, float("inf"), nonfinite=True)
    assert log.read_bytes().endswith(b"s:1 trl:10.9875 lr:0.000060 norm:12.00\ns:2 trl:nan lr:0.000060 norm:inf "
                                     b"skipped:nonfinite\n")
    with open(log, "ab") as f:
        f.write(b"s:3 trl:4.2")  # the torn last line of a killed run
    # resuming from the checkpoint of step 1 keeps the lines of step 0 (not the torn one), then appends
    Logger(str(tmp_path), 0, start_step=1).log_val(1, 3.5)
    assert log.read_bytes() == (b"s:0 tel:4.2835\n"
                                b"s:0 eval:0.2955\n"
                                b"s:0 trl:1.0000 lr:0.000300 norm:1.23\n"
                                b"s:1 tel:3.5000\n")
    assert [p.name for p in tmp_path.iterdir()] == ["main.log"]  # no temporary file left


def test_logger_inactive(tmp_path):
    Logger(str(tmp_path), 1).log_val(0, 1.0)  # rank 1 never writes
    Logger(None, 0).log_train(0, 1.0, 1.0, 1.0)
    assert not any(tmp_path.iterdir())
    with pytest.raises(LlmcError, match=r"main.log: cannot write: No such file or directory$"):
        Logger(str(tmp_path / "absent"), 0)


# ----------------------------------------------------------------------------
# MFU (spec 9.9)

def test_mfu_peaks():
    h100 = "NVIDIA H100 80GB HBM3"
    assert get_flops_promised(h100, "bf16") == pytest.approx(988.84, abs=0.01)
    assert get_flops_promised(h100, "fp32") == pytest.approx(494.42, abs=0.01)
    assert get_flops_promised("NVIDIA H100 PCIe", "bf16") == 756.0
    for name in ("NVIDIA A100-PCIE-40GB", "NVIDIA A100-PCIE-80GB", "NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-80GB"):
        assert get_flops_promised(name, "bf16") == 312.0
        assert get_flops_promised(name, "fp32") == 156.0
    assert get_flops_promised("NVIDIA GeForce RTX 4080", "bf16") == pytest.approx(97.5, abs=0.05)  # 165.2*304/512*2505/2520
    assert get_flops_promised("NVIDIA GeForce RTX 3090", "bf16") == pytest.approx(80 * 328 / 336 * 1695 / 1860, rel=1e-6)
    assert get_flops_promised("Tesla V100-SXM2-16GB", "bf16") == -1.0  # Volta has no bf16 tensor cores
    assert get_flops_promised("Tesla V100-SXM2-16GB", "fp32") == 125.0
    for name in ("NVIDIA H200 NVL", "NVIDIA H100 NVL", "nvidia h100 80gb hbm3", "NVIDIA H200 ", ""):
        assert get_flops_promised(name, "bf16") == -1.0
    with pytest.raises(LlmcError, match=r"unknown precision 'fp8'"):
        get_flops_promised(h100, "fp8")


def test_mfu_h200_from_the_datasheet():
    """The H200's peak by hand: NVIDIA's datasheet gives 1,979 BF16 TFLOPS with sparsity (989.5 dense); the H100
    whitepaper's GH100 SXM5 has 528 tensor cores of 512 dense BF16 FMA per clock at 1830 MHz. llm.c's scaling from
    the Hopper base (756 TFLOPS at 456 cores, 1620 MHz) must land on that figure, as for the H100 SXM5."""
    by_hand = 528 * 512 * 2 * 1830e6 / 1e12
    assert by_hand == pytest.approx(1979 / 2, abs=0.1)
    bf16 = get_flops_promised("NVIDIA H200", "bf16")
    assert bf16 == pytest.approx(756 * 528 / 456 * 1830 / 1620, rel=1e-6)
    assert bf16 == pytest.approx(by_hand, rel=1e-3)
    assert bf16 == get_flops_promised("NVIDIA H100 80GB HBM3", "bf16")
    assert get_flops_promised("NVIDIA H200", "fp32") == pytest.approx(bf16 / 2, rel=1e-6)  # TF32: half the rate
    # a d12 step of 64x1024 tokens in 100 ms on an H200
    mfu = estimate_mfu(124_475_904, 12, 768, 1024, 64 * 1024, 0.1, bf16)
    assert mfu == pytest.approx(803_478_528 * 65536 / 0.1 / (by_hand * 1e12), rel=1e-3)
    assert format_mfu(mfu) == "53.3% bf16 MFU"


def test_mfu_start_up_line():
    assert describe_peak("NVIDIA H200", "bf16") == ("MFU: against 988.8 TFLOPS, the dense BF16 tensor-core peak of "
                                                    "NVIDIA H200 (hopper family at 528 tensor cores, 1830 MHz)")
    assert describe_peak("NVIDIA H200", "fp32").startswith("MFU: against 494.4 TFLOPS, the dense TF32 tensor-core")
    assert describe_peak("NVIDIA H100 NVL", "bf16") == ("MFU: no BF16 tensor-core peak known for 'NVIDIA H100 NVL'; "
                                                        "the step line prints MFU n/a")
    assert describe_peak("Tesla V100-SXM2-16GB", "bf16").startswith("MFU: no BF16 tensor-core peak known")


def test_mfu_estimate_and_format():
    assert flops_per_token(124_475_904, 12, 768, 1024) == 803_478_528
    tokens = 8 * 64 * 1024
    mfu = estimate_mfu(124_475_904, 12, 768, 1024, tokens, 1.25, 988.84)
    assert mfu == pytest.approx(803_478_528 * tokens / 1.25 / 988.84e12, rel=1e-6)
    assert format_mfu(mfu) == "34.1% bf16 MFU"
    assert format_mfu(0.4134) == "41.3% bf16 MFU"
    assert estimate_mfu(124_475_904, 12, 768, 1024, tokens, 1.25, -1.0) == -1.0
    assert format_mfu(-1.0) == "MFU n/a"
    assert format_mfu(estimate_mfu(1, 1, 1, 1, 1, 1.0, get_flops_promised("NVIDIA H100 NVL", "bf16"))) == "MFU n/a"
