"""Every NumPy op of llmc_py against PyTorch autograd (CPU, float64) on small odd shapes.

The reference is computed in float64 from the very float32 inputs the op receives, so the only
difference left is the op's own float32 rounding. float32 carries 2^-24 ~ 6e-8 relative precision and
every output here is a sum of at most ~1000 terms (matmuls over at most 387 inputs, the classifier's
softmax over V = 1000), so the accumulated rounding is typically sqrt(K) * 6e-8 <= 2e-6 of the output's
scale. Outputs are compared with `close`: |actual - expected| <= TOL * (|expected| + max|expected|),
TOL = 1e-5; the absolute part is scaled by the tensor's largest value because sums of signed terms
cancel and an element near 0 has no meaningful relative error. Measured: every `close` here also passes
at 1e-6, so TOL leaves 10x headroom, while a wrong index, a missing term, a wrong scale or a dropped
accumulation moves results by 1e-3 or more of their scale.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmc_py.adamw import HYPER_SIZE, adamw_hyper, adamw_update
from llmc_py.attention import attention_backward, attention_forward
from llmc_py.encoder import encoder_backward, encoder_forward
from llmc_py.fused_classifier import fused_classifier
from llmc_py.gelu import gelu_backward_inplace, gelu_forward
from llmc_py.global_norm import global_norm_squared, grad_clip_scale
from llmc_py.layernorm import fused_residual_forward, layernorm_backward, layernorm_forward
import llmc_py.matmul as matmul_module
from llmc_py.matmul import matmul_backward, matmul_forward

B, T, C, NH = 3, 37, 96, 3
V, Vp = 1000, 1024
TOL = 1e-5


def close(actual, expected, tol=TOL):
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert actual.dtype == np.float32, f"result is {actual.dtype}, expected float32"
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def t64(a, grad=False):
    """float64 torch tensor holding exactly the float32 values of `a`."""
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


@pytest.fixture
def rng():
    return np.random.default_rng(1337)


# ----------------------------------------------------------------------------
# encoder


def test_encoder_forward_backward(rng):
    maxT = 41  # wpe rows beyond T must be neither read into out nor touched by the backward
    inp = rng.integers(0, 50, (B, T)).astype(np.int32)  # 111 ids over 50 values: many repeats
    wte, wpe = f32(rng, Vp, C), f32(rng, maxT, C)
    out = np.full((B, T, C), np.nan, np.float32)
    encoder_forward(out, inp, wte, wpe)

    wte_t, wpe_t = t64(wte, True), t64(wpe, True)
    ref = wte_t[torch.from_numpy(inp).long()] + wpe_t[:T]
    close(out, ref)

    dout = f32(rng, B, T, C)
    dwte0, dwpe0 = f32(rng, Vp, C), f32(rng, maxT, C)  # nonzero grads: the backward must add
    dwte, dwpe = dwte0.copy(), dwpe0.copy()
    encoder_backward(dwte, dwpe, dout, inp)
    ref.backward(t64(dout))
    close(dwte, dwte0 + wte_t.grad.numpy())
    close(dwpe, dwpe0 + wpe_t.grad.numpy())
    unused = np.setdiff1d(np.arange(Vp), inp)
    assert np.array_equal(dwte[unused], dwte0[unused])
    assert np.array_equal(dwpe[T:], dwpe0[T:])


# ----------------------------------------------------------------------------
# layernorm


def ln_reference(x_t, w_t, b_t):
    return F.layer_norm(x_t, (x_t.shape[-1],), w_t, b_t, eps=1e-5)


def test_layernorm_forward_backward(rng):
    x = f32(rng, B, T, C, scale=3.0) + 0.5
    w, b = f32(rng, C), f32(rng, C)
    out = np.empty_like(x)
    mean = np.empty((B, T), np.float32)
    rstd = np.empty((B, T), np.float32)
    layernorm_forward(out, mean, rstd, x, w, b)

    x_t, w_t, b_t = t64(x, True), t64(w, True), t64(b, True)
    ref = ln_reference(x_t, w_t, b_t)
    close(out, ref)
    x64 = x.astype(np.float64)
    close(mean, x64.mean(-1))
    close(rstd, 1.0 / np.sqrt(x64.var(-1) + 1e-5))  # population variance

    dout = f32(rng, B, T, C)
    dinp0, dw0, db0 = f32(rng, B, T, C), f32(rng, C), f32(rng, C)
    dinp, dw, db = dinp0.copy(), dw0.copy(), db0.copy()
    layernorm_backward(dinp, dw, db, dout, x, w, mean, rstd)
    ref.backward(t64(dout))
    close(dinp, dinp0 + x_t.grad.numpy())
    close(dw, dw0 + w_t.grad.numpy())
    close(db, db0 + b_t.grad.numpy())


def test_fused_residual_forward(rng):
    inp1, inp2 = f32(rng, B, T, C), f32(rng, B, T, C)
    w, b = f32(rng, C), f32(rng, C)
    residual, normed = np.empty_like(inp1), np.empty_like(inp1)
    mean, rstd = np.empty((B, T), np.float32), np.empty((B, T), np.float32)
    fused_residual_forward(residual, normed, mean, rstd, inp1, inp2, w, b)
    assert np.array_equal(residual, inp1 + inp2)  # one float32 add: exact
    close(normed, ln_reference(t64(inp1) + t64(inp2), t64(w), t64(b)))
    r64 = inp1.astype(np.float64) + inp2
    close(mean, r64.mean(-1))
    close(rstd, 1.0 / np.sqrt(r64.var(-1) + 1e-5))


# ----------------------------------------------------------------------------
# gelu


def test_gelu_forward_backward(rng):
    x = f32(rng, B, T, 4 * C, scale=2.5)
    out = np.empty_like(x)
    gelu_forward(out, x)
    x_t = t64(x, True)
    ref = F.gelu(x_t, approximate="tanh")
    close(out, ref)

    dout = f32(rng, B, T, 4 * C)
    d = dout.copy()
    gelu_backward_inplace(d, x)
    ref.backward(t64(dout))
    close(d, x_t.grad)
    assert np.array_equal(x, x_t.detach().numpy().astype(np.float32))  # input untouched

    with pytest.raises(AssertionError):
        gelu_forward(x, x)


def test_gelu_dense_grid():
    """Elementwise absolute check on [-6, 6], where every term of the formula matters (a constant off by 3e-4
    relative, 0.0447 for 0.044715, moves values by up to 8e-6). float32 ulps there are <= 5e-7; measured
    max errors 4.2e-7 (forward) and 1.4e-7 (backward); torch's own float32 GELU gets 4.3e-7 and 1.0e-6."""
    x = np.linspace(-6.0, 6.0, 2001, dtype=np.float32)
    out = np.empty_like(x)
    gelu_forward(out, x)
    d = np.ones_like(x)
    gelu_backward_inplace(d, x)
    x_t = t64(x, True)
    ref = F.gelu(x_t, approximate="tanh")
    ref.sum().backward()
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(d, x_t.grad.numpy(), rtol=0, atol=1e-6)


def test_gelu_extreme_inputs_stay_finite():
    x = np.array([-200.0, -30.0, -10.0, 0.0, 10.0, 30.0, 200.0], np.float32)
    out = np.empty_like(x)
    d = np.ones_like(x)
    with np.errstate(all="raise"):  # no overflow warnings, no NaN
        gelu_forward(out, x)
        gelu_backward_inplace(d, x)
    np.testing.assert_allclose(out, [0, 0, 0, 0, 10, 30, 200], atol=1e-6)
    np.testing.assert_allclose(d, [0, 0, 0, 0.5, 1, 1, 1], atol=1e-6)


# ----------------------------------------------------------------------------
# matmul


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dweight_block", [None, 16])
def test_matmul_forward_backward(rng, monkeypatch, with_bias, dweight_block):
    """dweight_block=16 runs the blocked dweight accumulation (used for OC > 4096, the LM head) in 5 blocks."""
    if dweight_block is not None:
        monkeypatch.setattr(matmul_module, "_DWEIGHT_BLOCK", dweight_block)
    Cin, OC = 45, 77  # odd sizes on both sides
    x = f32(rng, B, T, Cin)
    w = f32(rng, OC, Cin, scale=0.2)
    b = f32(rng, OC) if with_bias else None
    out = np.empty((B, T, OC), np.float32)
    matmul_forward(out, x, w, b)
    x_t, w_t = t64(x, True), t64(w, True)
    b_t = t64(b, True) if with_bias else None
    ref = F.linear(x_t, w_t, b_t)
    close(out, ref)

    dout = f32(rng, B, T, OC)
    dout_before = dout.copy()
    dinp = np.full((B, T, Cin), 123.0, np.float32)  # assigned: the old content must vanish
    dw0 = f32(rng, OC, Cin)
    dw = dw0.copy()
    db0 = f32(rng, OC) if with_bias else None
    db = db0.copy() if with_bias else None
    matmul_backward(dinp, dw, db, dout, x, w)
    ref.backward(t64(dout))
    close(dinp, x_t.grad)
    close(dw, dw0 + w_t.grad.numpy())
    if with_bias:
        close(db, db0 + b_t.grad.numpy())
    assert np.array_equal(dout, dout_before)


def test_matmul_forward_fused_gelu(rng):
    """-ge >= 1: pre_gelu = x @ W^T + b (aux), out = gelu(pre_gelu), compared with torch's tanh GELU."""
    Cin, OC = C, 129
    x, w, b = f32(rng, B, T, Cin), f32(rng, OC, Cin, scale=0.2), f32(rng, OC)
    out = np.empty((B, T, OC), np.float32)
    pre = np.empty((B, T, OC), np.float32)
    matmul_forward(out, x, w, b, pre_gelu=pre)
    ref_pre = F.linear(t64(x), t64(w), t64(b))
    close(pre, ref_pre)
    close(out, F.gelu(ref_pre, approximate="tanh"))


def test_matmul_backward_fused_dgelu(rng):
    """llm.c's fcproj backward: the layer's input is gelu(pre), dinp comes back as the gradient w.r.t. pre."""
    Cin, OC = 4 * C + 3, 51
    pre = f32(rng, B, T, Cin, scale=2.0)
    x = np.empty_like(pre)
    gelu_forward(x, pre)  # the layer input, as the forward stored it
    w, b = f32(rng, OC, Cin, scale=0.1), f32(rng, OC)
    dout = f32(rng, B, T, OC)
    dout_before = dout.copy()
    dinp = np.empty((B, T, Cin), np.float32)
    dw0, db0 = f32(rng, OC, Cin), f32(rng, OC)
    dw, db = dw0.copy(), db0.copy()
    matmul_backward(dinp, dw, db, dout, x, w, pre_gelu=pre)

    pre_t, w_t, b_t = t64(pre, True), t64(w, True), t64(b, True)
    F.linear(F.gelu(pre_t, approximate="tanh"), w_t, b_t).backward(t64(dout))
    close(dinp, pre_t.grad)
    close(dw, dw0 + w_t.grad.numpy())
    close(db, db0 + b_t.grad.numpy())
    assert np.array_equal(dout, dout_before)


# ----------------------------------------------------------------------------
# attention


def attention_reference(inp_t):
    q, k, v = inp_t.view(B, T, 3, NH, C // NH).permute(2, 0, 3, 1, 4)
    pre = q @ k.transpose(-1, -2) / math.sqrt(C // NH)
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    att = torch.softmax(pre.masked_fill(mask, -math.inf), dim=-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, C)
    return q, k, v, att, y


def test_attention_forward_backward(rng):
    HS = C // NH
    inp = f32(rng, B, T, 3 * C)
    out = np.empty((B, T, C), np.float32)
    qkvr = np.empty((3, B, NH, T, HS), np.float32)
    att = f32(rng, B, NH, T, T)  # stale garbage: the forward must not rely on a zeroed buffer
    attention_forward(out, qkvr, att, inp, NH)

    inp_t = t64(inp, True)
    q, k, v, att_ref, y_ref = attention_reference(inp_t)
    for r in (q, k, v):
        r.retain_grad()
    assert np.array_equal(qkvr, torch.stack([q, k, v]).detach().numpy().astype(np.float32))  # a pure permute
    close(att, att_ref)
    close(out, y_ref)
    upper = np.triu(np.ones((T, T), bool), 1)
    above = att[:, :, upper]
    assert np.all(above == 0) and not np.any(np.signbit(above)), "above the diagonal must be exact +0"
    np.testing.assert_allclose(att.sum(-1, dtype=np.float64), 1.0, rtol=0, atol=1e-6)

    dout = f32(rng, B, T, C)
    dinp = np.full((B, T, 3 * C), 7.0, np.float32)  # assigned, not accumulated
    dqkvr = np.empty_like(qkvr)
    datt = np.empty((B, NH, T, T), np.float32)
    scratch = np.empty((B, T, C), np.float32)
    attention_backward(dinp, dqkvr, datt, scratch, dout, qkvr, att, NH)
    y_ref.backward(t64(dout))
    close(dinp, inp_t.grad)
    close(dqkvr, torch.stack([q.grad, k.grad, v.grad]))
    dpre = datt[:, :, upper]
    assert np.all(dpre == 0) and not np.any(np.signbit(dpre)), "dpreatt above the diagonal must be exact +0"


# ----------------------------------------------------------------------------
# fused classifier


def test_fused_classifier(rng):
    logits = f32(rng, B, T, Vp, scale=4.0)
    logits[..., V:] = 1e4  # padded columns: would dominate any softmax that wrongly included them
    logits[0, 0, :V] += 80.0  # a large offset that only max subtraction survives in float32 exp
    targets = rng.integers(0, V, (B, T)).astype(np.int32)
    dloss = 1.0 / (B * T * 2)
    losses0 = f32(rng, B, T)  # the loss buffer accumulates across micro steps
    losses = losses0.copy()
    logits_t = t64(logits[..., :V], True)
    padded_before = logits[..., V:].copy()

    fused_classifier(logits, losses, np.array([dloss], np.float32), targets, V)

    loss_ref = F.cross_entropy(logits_t.reshape(-1, V), torch.from_numpy(targets).long().reshape(-1),
                               reduction="none").reshape(B, T)
    close(losses, losses0 + loss_ref.detach().numpy())
    (loss_ref.sum() * dloss).backward()
    close(logits[..., :V], logits_t.grad)
    assert np.array_equal(logits[..., V:], padded_before)
    # each dlogits row sums to 0 (probabilities sum to 1, minus the one-hot), scaled by dloss
    np.testing.assert_allclose(logits[..., :V].sum(-1, dtype=np.float64), 0.0, atol=1e-6 * dloss)


# ----------------------------------------------------------------------------
# AdamW


def torch_adamw_steps(p0, grads_per_step, lr, wd, eps):
    p = t64(p0, True)
    opt = torch.optim.AdamW([p], lr=lr, betas=(0.9, 0.95), eps=eps, weight_decay=wd)
    for g in grads_per_step:
        p.grad = t64(g)
        opt.step()
    state = opt.state[p]
    return p.detach().numpy(), state["exp_avg"].numpy(), state["exp_avg_sq"].numpy()


@pytest.mark.parametrize("weight_decay", [0.1, 0.0])
@pytest.mark.parametrize("grad_scale", [1.0, 0.37])
def test_adamw_against_torch(rng, weight_decay, grad_scale):
    """torch applies the decoupled decay first, p*(1 - lr*wd) - lr*mh/(sqrt(vh)+eps), where llm.c computes
    p - lr*(mh/(sqrt(vh)+eps) + wd*p): equal in exact arithmetic, different rounding order, so the float32
    result matches torch's float64 one to float32 precision of p (~6e-8 relative) plus the update's ~1e-7."""
    n, steps, lr, eps = 40_003, 4, 1e-2, 1e-8  # n spans several of adamw's 16384-element blocks
    p0 = f32(rng, n)
    grads = [f32(rng, n) for _ in range(steps)]
    # torch has no grad_scale: hand it the scaled grads (exactly what llm.c's kernel multiplies in)
    p_ref, m_ref, v_ref = torch_adamw_steps(p0, [g.astype(np.float64) * grad_scale for g in grads],
                                            lr, weight_decay, eps)
    params, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    scale = np.array([grad_scale], np.float32)
    for t, g in enumerate(grads, start=1):
        hyper = adamw_hyper(np.empty(HYPER_SIZE, np.float32), lr, weight_decay, t, 0.9, 0.95)
        adamw_update(params, g, m, v, None, hyper, scale, np.array([t], np.uint32), 0.9, 0.95, eps, decay=True)
    np.testing.assert_allclose(params, p_ref, rtol=1e-6, atol=1e-7)
    close(m, m_ref, tol=1e-6)  # m is a signed sum: relative to its scale
    np.testing.assert_allclose(v, v_ref, rtol=1e-6, atol=0)  # v is a positive sum: elementwise relative
    assert params.dtype == m.dtype == v.dtype == np.float32
    assert np.abs(params - p0).max() > 2 * lr  # not vacuous: params moved by several steps of ~lr


def test_adamw_master_weights_and_slices(rng):
    """With master weights: master gets the new value, params become an exact copy; views of bigger flat
    buffers are updated in place and nothing outside the slice moves."""
    total, lo, hi = 60_000, 1000, 40_001  # the slice spans several 16384-element blocks
    params_all, grads_all = f32(rng, total), f32(rng, total)
    m_all, v_all = f32(rng, total, scale=0.01), np.abs(f32(rng, total, scale=0.01))
    master_all = params_all.copy()
    before = [a.copy() for a in (params_all, m_all, v_all, master_all)]
    sl = slice(lo, hi)
    hyper = adamw_hyper(np.empty(HYPER_SIZE, np.float32), 3e-4, 0.1, 7, 0.9, 0.95)
    one = np.ones(1, np.float32)
    adamw_update(params_all[sl], grads_all[sl], m_all[sl], v_all[sl], master_all[sl], hyper, one,
                 np.array([42], np.uint32), 0.9, 0.95, 1e-8, decay=True)

    # the same update without master weights on copies gives the same bits
    p, m, v = before[0][sl].copy(), before[1][sl].copy(), before[2][sl].copy()
    adamw_update(p, grads_all[sl], m, v, None, hyper, one, np.zeros(1, np.uint32), 0.9, 0.95, 1e-8, decay=True)
    assert np.array_equal(master_all[sl], p) and np.array_equal(params_all[sl], p)
    assert np.array_equal(m_all[sl], m) and np.array_equal(v_all[sl], v)
    assert not np.array_equal(p, before[0][sl])
    for now, old in zip((params_all, m_all, v_all, master_all), before):
        assert np.array_equal(now[:lo], old[:lo]) and np.array_equal(now[hi:], old[hi:])

    # and the value is right: one step at t = 7 from the given m, v against the formula in float64
    g = grads_all[sl].astype(np.float64)
    m64 = 0.9 * before[1][sl] + 0.1 * g
    v64 = 0.95 * before[2][sl] + 0.05 * g * g
    p_old = before[3][sl].astype(np.float64)
    p64 = p_old - 3e-4 * ((m64 / (1 - 0.9 ** 7)) / (np.sqrt(v64 / (1 - 0.95 ** 7)) + 1e-8) + 0.1 * p_old)
    np.testing.assert_allclose(p, p64, rtol=1e-6, atol=1e-7)

    # a tensor llm.c does not decay (decay=False) ignores the weight decay in hyper: as if it were 0
    undecayed, zero_wd = before[0][sl].copy(), before[0][sl].copy()
    no_wd = adamw_hyper(np.empty(HYPER_SIZE, np.float32), 3e-4, 0.0, 7, 0.9, 0.95)
    for params, h, decay in ((undecayed, hyper, False), (zero_wd, no_wd, True)):
        adamw_update(params, grads_all[sl], before[1][sl].copy(), before[2][sl].copy(), None, h, one,
                     np.zeros(1, np.uint32), 0.9, 0.95, 1e-8, decay=decay)
    assert np.array_equal(undecayed, zero_wd) and not np.array_equal(undecayed, p)


# ----------------------------------------------------------------------------
# global norm


def test_global_norm_squared(rng):
    grads = f32(rng, 123_457, scale=0.05)
    out = np.zeros(1, np.float32)
    global_norm_squared(out, grads)
    ref = torch.linalg.vector_norm(t64(grads)).item() ** 2
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], ref, rtol=1e-7)  # float64 accumulation: only the final rounding

    # shards accumulate into the same slot and add up to the whole
    shards = np.zeros(1, np.float32)
    for part in np.array_split(grads, 5):
        global_norm_squared(shards, part)
    np.testing.assert_allclose(shards[0], ref, rtol=1e-6)
    np.testing.assert_allclose(math.sqrt(out[0]), torch.linalg.vector_norm(t64(grads)).item(), rtol=1e-7)


@pytest.mark.parametrize("norm", [0.25, 1.0, 1.0000001, 3.7, 1234.5])
def test_grad_clip_scale(norm):
    """llm.c's clipping at max_norm 1: the grads are scaled by 1/norm when the norm exceeds 1, else left alone;
    the scale is the float64 quotient rounded to float32 once."""
    norm_squared = np.array([norm * norm], np.float32)
    scale = np.full(1, np.nan, np.float32)
    grad_clip_scale(scale, norm_squared, 1.0)
    stored_norm = math.sqrt(float(norm_squared[0]))  # the norm of the float32 sum of squares
    assert scale.dtype == np.float32
    if stored_norm > 1.0:
        assert scale[0] < 1.0 and abs(float(scale[0]) * stored_norm - 1.0) <= 2 ** -24  # one rounding
    else:
        assert scale[0] == 1.0
