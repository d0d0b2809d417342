"""Every kernel of kernels_cu against its NumPy op from llmc_py, on odd shapes, in fp32 and bf16 (tier 4: GPU).

Skipped as a whole when CuPy is missing or no CUDA device answers. The launches here follow the launch contract
written above each kernel, independently of the launchers in llmc_py/<layer>.py (tests/test_gpu_backend.py
runs those).
Inputs are rounded to floatX on the host first, so the NumPy op sees exactly the values the kernel reads; bf16
data travels as uint16 bit patterns (ml_dtypes converts, round-to-nearest-even), so no CuPy bf16 support is needed.
Comparison: |actual - expected| <= tol * (|expected| + max|expected|) as in test_ops.py. fp32 tol 1e-4: the
kernels are built with --use_fast_math (ex2.approx, rsqrt.approx, div.approx) and sum in other orders than NumPy;
GELU gets 2e-3 because fast-math tanhf is tanh.approx.f32 (relative error up to 2^-11). bf16 tol 2e-2: the
outputs carry bf16's 2^-9 relative rounding (2^-8 for stochastic rounding), plus their f32 arithmetic.
"""
import math

import numpy as np
import pytest

from gpu_gate import cp  # noqa: E402  (skips this module without a GPU)

import ml_dtypes  # noqa: E402

from llmc_py.adamw import HYPER_SIZE, adamw_hyper, adamw_update  # noqa: E402
from llmc_py.attention import attention_backward, attention_forward  # noqa: E402
from llmc_py.cuda import get_kernel  # noqa: E402
from llmc_py.encoder import encoder_backward, encoder_forward, wte_buckets  # noqa: E402
from llmc_py.fused_classifier import fused_classifier  # noqa: E402
from llmc_py.gelu import gelu_backward_inplace, gelu_forward  # noqa: E402
from llmc_py.global_norm import global_norm_squared, grad_clip_scale  # noqa: E402
from llmc_py.layernorm import fused_residual_forward, layernorm_backward, layernorm_forward  # noqa: E402
from llmc_py.matmul import matmul_backward, matmul_forward  # noqa: E402

B, T, C, NH = 3, 37, 96, 3
HS = C // NH
V, Vp = 1000, 1024
PRECISIONS = ["fp32", "bf16"]
TOL = {"fp32": 1e-4, "bf16": 2e-2}
i32, u32, u64, i64, f32s = np.int32, np.uint32, np.uint64, np.int64, np.float32
NULL = np.uint64(0)  # a null pointer argument

# ----------------------------------------------------------------------------
# helpers


@pytest.fixture
def rng():
    return np.random.default_rng(1337)


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def x128(precision):
    """elements per 16-byte packet of floatX"""
    return 4 if precision == "fp32" else 8


def itemsize(precision):
    return 4 if precision == "fp32" else 2


def quantize(a, precision):
    """float32 array of the values floatX can hold (round to nearest even)."""
    a = np.asarray(a, np.float32)
    return a.copy() if precision == "fp32" else a.astype(ml_dtypes.bfloat16).astype(np.float32)


def to_gpu(a, precision):
    """float32 host array -> floatX device array (bf16 as uint16 bit patterns)."""
    a = np.ascontiguousarray(a, np.float32)
    return cp.asarray(a) if precision == "fp32" else cp.asarray(a.astype(ml_dtypes.bfloat16).view(np.uint16))


def to_host(d, precision):
    """floatX device array -> float32 host array."""
    h = cp.asnumpy(d)
    return h if precision == "fp32" else h.view(ml_dtypes.bfloat16).astype(np.float32)


def launch(layer, precision, kernel, grid, block, args, shared_mem=0):
    get_kernel(layer, precision, kernel)(tuple(grid), (block,), tuple(args), shared_mem=shared_mem)
    cp.cuda.get_current_stream().synchronize()


def close(actual, expected, tol):
    expected = np.asarray(expected, np.float64)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def num_sms():
    return cp.cuda.Device().attributes["MultiProcessorCount"]


def squirrel_noise5(position, seed):
    """spec 7.3 on uint32 arrays (computed in uint64, masked)."""
    mask = np.uint64(0xFFFFFFFF)
    m = (position.astype(np.uint64) * np.uint64(0xd2a80a3f)) & mask
    m = (m + np.uint64(seed)) & mask
    m ^= m >> np.uint64(9)
    m = (m + np.uint64(0xa884f197)) & mask
    m ^= m >> np.uint64(11)
    m = (m * np.uint64(0x6C736F4B)) & mask
    m ^= m >> np.uint64(13)
    m = (m + np.uint64(0xB79F3ABB)) & mask
    m ^= m >> np.uint64(15)
    m = (m * np.uint64(0x1b56c4f5)) & mask
    m ^= m >> np.uint64(17)
    return m.astype(np.uint32)


def stochastic_round_bf16(values, seed, block, slice_index):
    """What the kernels' stochastic_rounding gives for values[i] handled by element i of slice `slice_index`
    under the AdamW mapping (thread i % block of block (i // block, slice_index)); float32 results."""
    i = np.arange(values.size, dtype=np.uint64)
    ix = i % np.uint64(block)
    iy = (i // np.uint64(block)) * np.uint64(block) + np.uint64(slice_index)
    position = (ix + np.uint64(198491317) * iy) & np.uint64(0xFFFFFFFF)
    threshold = squirrel_noise5(position, seed) & np.uint32(0xFFFF)
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    low = bits & np.uint32(0xFFFF)
    bits = np.where(low > threshold, bits | np.uint32(0xFFFF), bits & np.uint32(0xFFFF0000))
    return quantize(bits.view(np.float32), "bf16")


# ----------------------------------------------------------------------------
# encoder


@pytest.mark.parametrize("precision", PRECISIONS)
def test_encoder(rng, precision):
    p, X, maxT = precision, x128(precision), 41
    inp = rng.integers(0, 50, (B, T)).astype(np.int32)
    inp[0, :25] = 7  # one bucket longer than the 8 warps of a block
    wte, wpe = quantize(f32(rng, Vp, C), p), quantize(f32(rng, maxT, C), p)
    inp_d, wte_d, wpe_d = cp.asarray(inp), to_gpu(wte, p), to_gpu(wpe, p)
    out_d = to_gpu(np.full((B, T, C), np.nan, np.float32), p)
    launch("encoder", p, "encoder_forward_kernel", (math.ceil(B * T * C / (256 * X)),), 256,
           (out_d, inp_d, wte_d, wpe_d, i32(B), i32(T), i32(C)))
    ref = np.empty((B, T, C), np.float32)
    encoder_forward(ref, inp, wte, wpe)
    assert np.array_equal(to_host(out_d, p), quantize(ref, p))  # one f32 add, one rounding: exact

    dout = quantize(f32(rng, B, T, C), p)
    dwte0, dwpe0 = quantize(f32(rng, Vp, C), p), quantize(f32(rng, maxT, C), p)
    info, workload = wte_buckets(inp)
    rows = len(info) + 40  # the table has more rows than the batch has tokens: the zero rows do nothing
    table = np.zeros((rows, 4), np.int32)
    table[:len(info)] = info
    info_d, workload_d, dout_d = cp.asarray(table), cp.asarray(workload), to_gpu(dout, p)
    seed_d = cp.asarray(np.array([2024], np.uint32))
    results = []
    for _ in range(2):  # twice from the same start: bitwise deterministic
        dwte_d, dwpe_d = to_gpu(dwte0, p), to_gpu(dwpe0, p)
        launch("encoder", p, "wpe_backward_kernel", (math.ceil(T * C / (256 * X)),), 256,
               (dwpe_d, dout_d, i32(B), i32(T), i32(C), seed_d))
        launch("encoder", p, "wte_backward_kernel", (rows, math.ceil(C / (32 * X))), 256,
               (dwte_d, info_d, workload_d, dout_d, i32(C), seed_d))
        results.append((to_host(dwte_d, p), to_host(dwpe_d, p)))
    assert all(np.array_equal(a, b) for a, b in zip(*results))
    dwte, dwpe = results[0]
    dwte_ref, dwpe_ref = dwte0.copy(), dwpe0.copy()
    encoder_backward(dwte_ref, dwpe_ref, dout, inp)
    close(dwte, dwte_ref, TOL[p] if p == "bf16" else 1e-5)
    close(dwpe, dwpe_ref, TOL[p] if p == "bf16" else 1e-5)
    unused = np.setdiff1d(np.arange(Vp), inp)
    assert np.array_equal(dwte[unused], dwte0[unused])
    assert np.array_equal(dwpe[T:], dwpe0[T:])

# ----------------------------------------------------------------------------
# layernorm


def ln_forward_launch(kernel, p, args, N):
    warps = 8
    launch("layernorm", p, kernel, (math.ceil(N / warps),), 32 * warps, args,
           shared_mem=warps * C * itemsize(p))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_layernorm_forward(rng, precision):
    p, N = precision, B * T
    x = quantize(f32(rng, B, T, C, scale=3.0) + 0.5, p)
    w, b = quantize(f32(rng, C), p), quantize(f32(rng, C), p)
    out_d = to_gpu(np.zeros((B, T, C), np.float32), p)
    mean_d, rstd_d = cp.zeros(N, cp.float32), cp.zeros(N, cp.float32)
    ln_forward_launch("layernorm_forward_kernel", p,
                      (out_d, mean_d, rstd_d, to_gpu(x, p), to_gpu(w, p), to_gpu(b, p), i32(N), i32(C)), N)
    out, mean, rstd = np.empty_like(x), np.empty((B, T), np.float32), np.empty((B, T), np.float32)
    layernorm_forward(out, mean, rstd, x, w, b)
    close(to_host(out_d, p), out, TOL[p])
    close(cp.asnumpy(mean_d).reshape(B, T), mean, 1e-4)
    close(cp.asnumpy(rstd_d).reshape(B, T), rstd, 1e-4)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_fused_residual_forward(rng, precision):
    p, N = precision, B * T
    inp1, inp2 = quantize(f32(rng, B, T, C), p), quantize(f32(rng, B, T, C), p)
    w, b = quantize(f32(rng, C), p), quantize(f32(rng, C), p)
    residual_d, normed_d = to_gpu(np.zeros((B, T, C)), p), to_gpu(np.zeros((B, T, C)), p)
    mean_d, rstd_d = cp.zeros(N, cp.float32), cp.zeros(N, cp.float32)
    ln_forward_launch("fused_residual_forward_kernel", p,
                      (residual_d, normed_d, mean_d, rstd_d, to_gpu(inp1, p), to_gpu(inp2, p), to_gpu(w, p),
                       to_gpu(b, p), i32(N), i32(C)), N)
    residual, normed = np.empty_like(inp1), np.empty_like(inp1)
    mean, rstd = np.empty((B, T), np.float32), np.empty((B, T), np.float32)
    fused_residual_forward(residual, normed, mean, rstd, inp1, inp2, w, b)
    if p == "bf16":  # the kernel normalizes the residual as stored, rounded to bf16
        residual = quantize(residual, p)
        layernorm_forward(normed, mean, rstd, residual, w, b)
    assert np.array_equal(to_host(residual_d, p), residual)
    close(to_host(normed_d, p), normed, TOL[p])
    close(cp.asnumpy(mean_d).reshape(B, T), mean, 1e-4)
    close(cp.asnumpy(rstd_d).reshape(B, T), rstd, 1e-4)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("grid", ["7", "2*SMs"])
def test_layernorm_backward(rng, precision, grid):
    """grid 7: 16 rows per block, the last block short; 2*SMs: more blocks than rows, most of them empty."""
    p, N, X = precision, B * T, x128(precision)
    x = quantize(f32(rng, B, T, C, scale=3.0) + 0.5, p)
    w, b = quantize(f32(rng, C), p), quantize(f32(rng, C), p)
    out, mean, rstd = np.empty_like(x), np.empty((B, T), np.float32), np.empty((B, T), np.float32)
    layernorm_forward(out, mean, rstd, x, w, b)
    dout = quantize(f32(rng, B, T, C), p)
    dinp0, dw0, db0 = quantize(f32(rng, B, T, C), p), quantize(f32(rng, C), p), quantize(f32(rng, C), p)
    dinp_d, dw_d, db_d = to_gpu(dinp0, p), to_gpu(dw0, p), to_gpu(db0, p)
    G = 7 if grid == "7" else 2 * num_sms()
    R = max(1, 512 // (C // X))
    scratch = cp.full(G * 2 * C, cp.nan, cp.float32)  # every partial must be written
    launch("layernorm", p, "layernorm_backward_kernel", (G,), 512,
           (dinp_d, scratch, to_gpu(dout, p), to_gpu(x, p), to_gpu(w, p), cp.asarray(mean), cp.asarray(rstd),
            i32(N), i32(C)), shared_mem=2 * R * C * 4)
    launch("layernorm", p, "layernorm_backward_reduce_kernel", (math.ceil(C / 256),), 256,
           (dw_d, db_d, scratch, i32(G), i32(C)))
    dinp, dw, db = dinp0.copy(), dw0.copy(), db0.copy()
    layernorm_backward(dinp, dw, db, dout, x, w, mean, rstd)
    close(to_host(dinp_d, p), dinp, TOL[p])
    close(to_host(dw_d, p), dw, TOL[p])
    close(to_host(db_d, p), db, TOL[p])

# ----------------------------------------------------------------------------
# attention


def permute_grid(X):
    return (math.ceil(B * NH * T * HS / (256 * X)),)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_attention_permutes(rng, precision):
    """Pure data movement: bit-exact in every precision."""
    p, X = precision, x128(precision)
    args_dims = (i32(B), i32(T), i32(NH), i32(HS))
    inp = quantize(f32(rng, B, T, 3 * C), p)
    qkvr_d = to_gpu(np.zeros((3, B, NH, T, HS)), p)
    launch("attention", p, "permute_kernel", permute_grid(X), 256,
           (qkvr_d[0], qkvr_d[1], qkvr_d[2], to_gpu(inp, p)) + args_dims)
    assert np.array_equal(to_host(qkvr_d, p), inp.reshape(B, T, 3, NH, HS).transpose(2, 0, 3, 1, 4))

    dqkvr = quantize(f32(rng, 3, B, NH, T, HS), p)
    dqkvr_d = to_gpu(dqkvr, p)
    dinp_d = to_gpu(np.zeros((B, T, 3 * C)), p)
    launch("attention", p, "permute_backward_kernel", permute_grid(X), 256,
           (dinp_d, dqkvr_d[0], dqkvr_d[1], dqkvr_d[2]) + args_dims)
    assert np.array_equal(to_host(dinp_d, p), dqkvr.transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * C))

    y = quantize(f32(rng, B, NH, T, HS), p)
    out_d = to_gpu(np.zeros((B, T, C)), p)
    launch("attention", p, "unpermute_kernel", permute_grid(X), 256, (out_d, to_gpu(y, p)) + args_dims)
    assert np.array_equal(to_host(out_d, p), y.transpose(0, 2, 1, 3).reshape(B, T, C))

    dout = quantize(f32(rng, B, T, C), p)
    dy_d = to_gpu(np.zeros((B, NH, T, HS)), p)
    launch("attention", p, "unpermute_backward_kernel", permute_grid(X), 256, (dy_d, to_gpu(dout, p)) + args_dims)
    assert np.array_equal(to_host(dy_d, p), dout.reshape(B, T, NH, HS).transpose(0, 2, 1, 3))


def softmax_grid():
    return (math.ceil(B * NH * T / 8),)


def assert_upper_plus_zero(a):
    upper = np.triu(np.ones((T, T), bool), 1)
    above = a[..., upper]
    assert np.all(above == 0) and not np.any(np.signbit(above)), "above the diagonal must be exact +0"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("in_place", [False, True])
def test_softmax_forward_backward(rng, precision, in_place):
    p, s = precision, 1.0 / math.sqrt(HS)
    preatt = quantize(f32(rng, B, NH, T, T, scale=4.0), p)
    preatt_d = to_gpu(preatt, p)
    att_d = preatt_d if in_place else to_gpu(np.full((B, NH, T, T), 5.0), p)  # stale values must vanish
    launch("attention", p, "softmax_forward_kernel", softmax_grid(), 256, (att_d, preatt_d, i32(B * NH), i32(T), f32s(s)))
    x = preatt.astype(np.float64)
    x[..., np.triu(np.ones((T, T), bool), 1)] = -np.inf
    e = np.exp(s * (x - x.max(-1, keepdims=True)))
    att_ref = e / e.sum(-1, keepdims=True)
    att = to_host(att_d, p)
    close(att, att_ref, TOL[p])
    assert_upper_plus_zero(att)

    datt = quantize(f32(rng, B, NH, T, T), p)
    datt_d = to_gpu(datt, p)
    dpre_d = datt_d if in_place else to_gpu(np.full((B, NH, T, T), 5.0), p)
    launch("attention", p, "softmax_backward_kernel", softmax_grid(), 256,
           (dpre_d, datt_d, att_d, i32(B * NH), i32(T), f32s(s)))
    a = att.astype(np.float64)
    dpre_ref = s * a * (datt - (a * datt).sum(-1, keepdims=True))
    dpre_ref[..., np.triu(np.ones((T, T), bool), 1)] = 0.0
    dpre = to_host(dpre_d, p)
    close(dpre, dpre_ref, TOL[p])
    assert_upper_plus_zero(dpre)


def test_attention_fp32_pipeline(rng):
    """The kernels with CuPy matmuls standing in for the cuBLAS GEMMs, against attention_forward/backward."""
    p, X, s = "fp32", 4, 1.0 / math.sqrt(HS)
    dims = (i32(B), i32(T), i32(NH), i32(HS))
    inp = f32(rng, B, T, 3 * C)
    qkvr_d = cp.empty((3, B, NH, T, HS), cp.float32)
    q, k, v = qkvr_d[0], qkvr_d[1], qkvr_d[2]
    launch("attention", p, "permute_kernel", permute_grid(X), 256, (q, k, v, cp.asarray(inp)) + dims)
    preatt_d = cp.ascontiguousarray(cp.matmul(q, k.swapaxes(-1, -2)))
    att_d = cp.empty((B, NH, T, T), cp.float32)
    launch("attention", p, "softmax_forward_kernel", softmax_grid(), 256, (att_d, preatt_d, i32(B * NH), i32(T), f32s(s)))
    y_d = cp.ascontiguousarray(cp.matmul(att_d, v))
    out_d = cp.empty((B, T, C), cp.float32)
    launch("attention", p, "unpermute_kernel", permute_grid(X), 256, (out_d, y_d) + dims)

    out, qkvr, att = np.empty((B, T, C), np.float32), np.empty((3, B, NH, T, HS), np.float32), \
        np.empty((B, NH, T, T), np.float32)
    attention_forward(out, qkvr, att, inp, NH)
    assert np.array_equal(cp.asnumpy(qkvr_d), qkvr)
    close(cp.asnumpy(att_d), att, 1e-4)
    close(cp.asnumpy(out_d), out, 1e-4)

    dout = f32(rng, B, T, C)
    dy_d = cp.empty((B, NH, T, HS), cp.float32)
    launch("attention", p, "unpermute_backward_kernel", permute_grid(X), 256, (dy_d, cp.asarray(dout)) + dims)
    datt_d = cp.ascontiguousarray(cp.matmul(dy_d, v.swapaxes(-1, -2)))
    dv = cp.ascontiguousarray(cp.matmul(att_d.swapaxes(-1, -2), dy_d))
    launch("attention", p, "softmax_backward_kernel", softmax_grid(), 256,
           (datt_d, datt_d, att_d, i32(B * NH), i32(T), f32s(s)))
    dq = cp.ascontiguousarray(cp.matmul(datt_d, k))
    dk = cp.ascontiguousarray(cp.matmul(datt_d.swapaxes(-1, -2), q))
    dinp_d = cp.empty((B, T, 3 * C), cp.float32)
    launch("attention", p, "permute_backward_kernel", permute_grid(X), 256, (dinp_d, dq, dk, dv) + dims)

    dinp, dqkvr = np.empty((B, T, 3 * C), np.float32), np.empty_like(qkvr)
    datt, scratch = np.empty((B, NH, T, T), np.float32), np.empty((B, T, C), np.float32)
    attention_backward(dinp, dqkvr, datt, scratch, dout, qkvr, att, NH)
    close(cp.asnumpy(datt_d), datt, 1e-4)
    close(cp.asnumpy(dinp_d), dinp, 1e-4)

# ----------------------------------------------------------------------------
# gelu


@pytest.mark.parametrize("precision", PRECISIONS)
def test_gelu(rng, precision):
    p, X = precision, x128(precision)
    tol = 2e-3 if p == "fp32" else TOL[p]  # tanh.approx.f32
    x = quantize(f32(rng, B, T, 4 * C, scale=2.5), p)
    N = x.size
    grid = (math.ceil(N / (512 * X)),)
    x_d, out_d = to_gpu(x, p), to_gpu(np.zeros_like(x), p)
    launch("gelu", p, "gelu_forward_kernel", grid, 512, (out_d, x_d, u64(N)))
    out = np.empty_like(x)
    gelu_forward(out, x)
    close(to_host(out_d, p), out, tol)

    d = quantize(f32(rng, B, T, 4 * C), p)
    d_d = to_gpu(d, p)
    launch("gelu", p, "gelu_backward_inplace_kernel", grid, 512, (d_d, x_d, u64(N)))
    gelu_backward_inplace(d, x)
    close(to_host(d_d, p), d, tol)

# ----------------------------------------------------------------------------
# matmul


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("OC", [3 * C, 1000])
def test_matmul_backward_bias(rng, precision, OC):
    p, X, N, Gy = precision, x128(precision), B * T, 5
    dout = quantize(f32(rng, B, T, OC), p)
    db0 = quantize(f32(rng, OC), p)
    db_d = to_gpu(db0, p)
    partials = cp.full(Gy * OC, cp.nan, cp.float32)
    launch("matmul", p, "matmul_backward_bias_kernel", (math.ceil(OC / (32 * X)), Gy), 256,
           (partials, to_gpu(dout, p), i32(N), i32(OC)))
    launch("matmul", p, "matmul_backward_bias_reduce_kernel", (math.ceil(OC / 256),), 256,
           (db_d, partials, i32(Gy), i32(OC)))
    # the NumPy op computes dbias alongside dinp and dweight; only dbias is compared
    w = np.zeros((OC, 8), np.float32)
    db, dw = db0.copy(), np.zeros_like(w)
    matmul_backward(np.empty((B, T, 8), np.float32), dw, db, dout, np.zeros((B, T, 8), np.float32), w)
    close(to_host(db_d, p), db, TOL[p])


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("Cin,OC,with_bias", [(C, 3 * C, True), (99, 130, True), (C, 77, False)])
def test_matmul_forward(rng, precision, Cin, OC, with_bias):
    """(96, 288): the 128-bit load path; (99, 130): scalar loads and partial tiles on both sides."""
    p, N = precision, B * T
    x, w = quantize(f32(rng, B, T, Cin), p), quantize(f32(rng, OC, Cin, scale=0.2), p)
    b = quantize(f32(rng, OC), p) if with_bias else None
    out_d = to_gpu(np.full((B, T, OC), np.nan), p)
    launch("matmul", p, "matmul_forward_kernel", (math.ceil(OC / 128), math.ceil(N / 128)), 256,
           (out_d, to_gpu(x, p), to_gpu(w, p), to_gpu(b, p) if with_bias else NULL, i32(N), i32(Cin), i32(OC)))
    out = np.empty((B, T, OC), np.float32)
    matmul_forward(out, x, w, b)
    close(to_host(out_d, p), out, TOL[p] if p == "bf16" else 1e-5)

@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("OC", [3 * C, 1000])
def test_add_bias(rng, precision, OC):
    """out += bias in place (the fp32 cuBLAS path's bias): one f32 add and one rounding per element, so exact;
    the packets past N*OC (a last block's idle threads) stay as they were."""
    p, X, N = precision, x128(precision), B * T
    out0, bias = quantize(f32(rng, N * OC + 2 * X), p), quantize(f32(rng, OC), p)
    out_d = to_gpu(out0, p)
    launch("matmul", p, "add_bias_kernel", (math.ceil(N * OC / (256 * X)),), 256,
           (out_d, to_gpu(bias, p), i32(N), i32(OC)))
    out = to_host(out_d, p)
    assert np.array_equal(out[:N * OC], quantize(out0[:N * OC].reshape(N, OC) + bias, p).reshape(-1))
    assert np.array_equal(out[N * OC:], out0[N * OC:])

# ----------------------------------------------------------------------------
# fused classifier


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("V_real", [V, 997])
def test_fused_classifier(rng, precision, V_real):
    """V_real 997: the last 16-byte packet of real columns is partial (scalar tail)."""
    p, BT = precision, B * T
    logits = f32(rng, B, T, Vp, scale=4.0)
    logits[..., V_real:] = 1e4  # padded columns would dominate a softmax that wrongly included them
    logits[0, 0, :V_real] += 80.0
    logits = quantize(logits, p)
    targets = rng.integers(0, V_real, (B, T)).astype(np.int32)
    dloss = 1.0 / (B * T * 2)
    losses0 = f32(rng, B, T)
    logits_d, losses_d = to_gpu(logits, p), cp.asarray(losses0)
    dloss_h = np.array([dloss], np.float32)
    launch("fused_classifier", p, "fused_classifier_kernel", (BT,), 1024,
           (logits_d, losses_d, cp.asarray(dloss_h), cp.asarray(targets), i32(BT), i32(V_real), i32(Vp)))
    ref_logits, ref_losses = logits.copy(), losses0.copy()
    fused_classifier(ref_logits, ref_losses, dloss_h, targets, V_real)
    got = to_host(logits_d, p)
    close(cp.asnumpy(losses_d), ref_losses, 1e-4 if p == "fp32" else 1e-3)
    close(got[..., :V_real], ref_logits[..., :V_real], TOL[p])
    assert np.array_equal(got[..., V_real:], logits[..., V_real:])

# ----------------------------------------------------------------------------
# AdamW


@pytest.mark.parametrize("precision,with_master,decay", [("fp32", True, True), ("fp32", False, True),
                                                          ("fp32", True, False), ("bf16", True, True),
                                                          ("bf16", True, False)])
def test_adamw(rng, precision, with_master, decay):
    """Three slices of n = 1000 (two blocks of 512, the second partial); params/grads slices every 1200
    elements (the gaps must not move), m/v/master packed every 1000 as in the ZeRO-1 shard layout. The step's
    values (lr, weight decay, bias corrections, clip scale, seed) are read from device buffers. (bf16 without
    master weights rounds from the bf16 value with the same kernel code: the master case covers it.)"""
    p, n, slices, w_stride, s_stride = precision, 1000, 3, 1200, 1000
    lr, beta1, beta2, eps, wd, grad_scale, t, seed = 3e-3, 0.9, 0.95, 1e-8, 0.1, 0.7, 5, 987654321
    params0 = quantize(f32(rng, slices * w_stride), p)
    grads = quantize(f32(rng, slices * w_stride), p)
    m0 = f32(rng, slices * s_stride, scale=0.01)
    v0 = np.abs(f32(rng, slices * s_stride, scale=0.01))
    master0 = params0.reshape(slices, w_stride)[:, :n].reshape(-1).copy() + f32(rng, slices * n, scale=1e-3)
    params_d, grads_d = to_gpu(params0, p), to_gpu(grads, p)
    m_d, v_d, master_d = cp.asarray(m0), cp.asarray(v0), cp.asarray(master0)
    hyper = adamw_hyper(np.empty(HYPER_SIZE, np.float32), lr, wd, t, beta1, beta2)
    scale, seeds = np.array([grad_scale], np.float32), np.array([seed], np.uint32)
    launch("adamw", p, "adamw_kernel", (math.ceil(n / 512), slices), 512,
           (params_d, master_d if with_master else NULL, grads_d, m_d, v_d, u64(n), i64(w_stride), i64(s_stride),
            cp.asarray(hyper), cp.asarray(scale), cp.asarray(seeds), f32s(beta1), f32s(beta2), f32s(eps),
            i32(decay)))
    params = to_host(params_d, p).reshape(slices, w_stride)
    m, v, master = cp.asnumpy(m_d), cp.asnumpy(v_d), cp.asnumpy(master_d)
    for y in range(slices):
        w_sl, s_sl = slice(y * w_stride, y * w_stride + n), slice(y * s_stride, y * s_stride + n)
        p_ref, m_ref, v_ref = params0[w_sl].copy(), m0[s_sl].copy(), v0[s_sl].copy()
        master_ref = master0[y * n:(y + 1) * n].copy() if with_master else None
        adamw_update(p_ref, grads[w_sl], m_ref, v_ref, master_ref, hyper, scale, seeds, beta1, beta2, eps, decay)
        close(m[s_sl], m_ref, 1e-6)
        np.testing.assert_allclose(v[s_sl], v_ref, rtol=1e-6)
        if with_master:
            got_master = master[s_sl]
            np.testing.assert_allclose(got_master, master_ref, rtol=1e-6, atol=1e-7)
            if p == "bf16":  # the bf16 params are the kernel's own master values, stochastically rounded
                assert np.array_equal(params[y, :n], stochastic_round_bf16(got_master, seed, 512, y))
            else:
                assert np.array_equal(params[y, :n], got_master)
        else:
            np.testing.assert_allclose(params[y, :n], p_ref, rtol=1e-6, atol=1e-7)
        assert np.array_equal(params[y, n:], params0.reshape(slices, w_stride)[y, n:])  # gaps untouched


@pytest.mark.parametrize("precision", PRECISIONS)
def test_init_from_master(rng, precision):
    p, n, slices, w_stride, s_stride, seed = precision, 1000, 3, 1100, 1000, 4242
    master = f32(rng, slices * s_stride)
    params0 = f32(rng, slices * w_stride)
    params_d = to_gpu(params0, p)
    launch("adamw", p, "init_from_master_kernel", (math.ceil(n / 512), slices), 512,
           (params_d, cp.asarray(master), u64(n), i64(w_stride), i64(s_stride), u32(seed)))
    params = to_host(params_d, p).reshape(slices, w_stride)
    for y in range(slices):
        src = master[y * s_stride:y * s_stride + n]
        expected = stochastic_round_bf16(src, seed, 512, y) if p == "bf16" else src
        assert np.array_equal(params[y, :n], expected)
        assert np.array_equal(params[y, n:], quantize(params0.reshape(slices, w_stride)[y, n:], p))

# ----------------------------------------------------------------------------
# global norm


@pytest.mark.parametrize("precision", PRECISIONS)
def test_global_norm(rng, precision):
    """Three slices of 12345 elements, 7 blocks per slice, accumulated twice into the same slots (+=), and
    aggregated into an out that already holds a value."""
    p, count, slices, stride, gx = precision, 12_345, 3, 13_000, 7
    values = quantize(f32(rng, slices * stride, scale=0.05), p)
    values_d = to_gpu(values, p)
    slots = cp.zeros(gx * slices, cp.float32)
    for _ in range(2):
        launch("global_norm", p, "global_norm_squared_kernel", (gx, slices), 512,
               (slots, values_d, u64(count), i64(stride)))
    out_d = cp.full(1, 1.5, cp.float32)
    launch("global_norm", p, "global_norm_aggregate_kernel", (1,), 1024, (out_d, slots, i32(gx * slices)))
    ref = np.full(1, 1.5, np.float32)
    for _ in range(2):
        for y in range(slices):
            global_norm_squared(ref, values[y * stride:y * stride + count])
    np.testing.assert_allclose(cp.asnumpy(out_d), ref, rtol=1e-5)


@pytest.mark.parametrize("norm", [0.5, 1.0, 2.5, 1e4])
def test_grad_clip_scale(norm):
    """The clip scale from the sum of squares in device memory, bit for bit the host's float64 quotient."""
    norm_squared = np.array([norm * norm], np.float32)
    scale_d = cp.full(1, np.nan, cp.float32)
    launch("global_norm", "fp32", "grad_clip_scale_kernel", (1,), 1, (scale_d, cp.asarray(norm_squared), f32s(1.0)))
    ref = np.full(1, np.nan, np.float32)
    grad_clip_scale(ref, norm_squared, 1.0)
    assert cp.asnumpy(scale_d)[0] == ref[0]

# ----------------------------------------------------------------------------
# cast


@pytest.mark.parametrize("precision", PRECISIONS)
def test_cast(rng, precision):
    p, n, slices = precision, 1001, 2
    src = f32(rng, slices * 1100)
    dst_d = to_gpu(np.zeros(slices * 1200), p)
    launch("cast", p, "cast_f32_to_floatX_kernel", (math.ceil(n / 512), slices), 512,
           (dst_d, cp.asarray(src), u64(n), i64(1200), i64(1100)))
    dst = to_host(dst_d, p).reshape(slices, 1200)
    for y in range(slices):
        assert np.array_equal(dst[y, :n], quantize(src[y * 1100:y * 1100 + n], p))  # round to nearest even
        assert np.all(dst[y, n:] == 0)

    wide_d = cp.zeros(slices * 1100, cp.float32)
    launch("cast", p, "cast_floatX_to_f32_kernel", (math.ceil(n / 512), slices), 512,
           (wide_d, dst_d, u64(n), i64(1100), i64(1200)))
    wide = cp.asnumpy(wide_d).reshape(slices, 1100)
    for y in range(slices):
        assert np.array_equal(wide[y, :n], dst[y, :n])  # exact widening


@pytest.mark.parametrize("precision", PRECISIONS)
def test_cast_f32_to_f16(rng, precision):
    """--matmul fp16fc's operands: f32 -> fp16 bit patterns rounded to nearest even (NumPy's float16 cast), with
    ties, fp16 subnormals, overflow to infinity and signed zeros; the elements past n stay as they were."""
    n = 1001
    src = f32(rng, n, scale=3.0)
    src[:8] = [1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 3e-6, -3e-7, 70000.0, -np.inf, -0.0, 65519.0]
    dst0 = np.full(n + 7, 0xABCD, np.uint16)
    dst_d = cp.asarray(dst0)
    launch("cast", precision, "cast_f32_to_f16_kernel", (math.ceil(n / 512),), 512, (dst_d, cp.asarray(src), u64(n)))
    dst = cp.asnumpy(dst_d)
    with np.errstate(over="ignore"):  # 70000 overflows to infinity, on purpose
        assert np.array_equal(dst[:n], src.astype(np.float16).view(np.uint16))
    assert np.array_equal(dst[n:], dst0[n:])
