"""Causal multi-head self-attention, llm.c's non-cuDNN path: permute, q @ k^T, causal softmax, att @ v, unpermute.

Design decision: the full (B,NH,T,T) probability matrix `att` is materialized and saved for the backward,
with exact zeros above the diagonal (llm.c never writes them and relies on the buffer's initial memset;
here they are written as 0 every call, so a stale buffer cannot leak into the backward). q, k, v are
permuted once into `qkvr` (3,B,NH,T,HS) so every product is a batched matmul over contiguous heads, and
the backward reuses the caller's buffers: `scratch` for the permuted dout, `datt` for datt and then, in
place, dpreatt. The 1/sqrt(HS) scale sits inside the softmax (exp(s * (x - max))) on unscaled q @ k^T.
dinp is assigned (=), not accumulated: it is the gradient of the QKV matmul's output.
On the GPU (kernels_cu/attention.cu plus cuBLAS strided-batched GEMMs) the forward computes q @ k^T straight
into att and runs the softmax in place there, and uses `inp` (free once permuted) for att @ v: no extra scratch.

The other implementation is cuDNN's flash attention (bf16 on the GPU, llmc_py/attention_cudnn.py), reached through
the same two calls: the saved state picks it. Handed the (B,NH,T) float32 softmax statistics as `att` instead of the
(B,NH,T,T) matrix, the forward reads q, k, v by strides from `inp`, which must then be kept for the backward (llm.c's
cuDNN layout: the QKV matmul writes qkvr[l] and that is passed as both `qkvr` and `inp`). Which one runs is decided
once, by `choose_attention`: cuDNN for bf16 on a GPU where the package and library load, llm.c's kernels otherwise.
"""
import math

import numpy as np

from llmc_py import LlmcError, attention_cudnn, blas
from llmc_py.cuda import launch, on_device, precision_of, x128_size

PERMUTE_BLOCK, SOFTMAX_BLOCK = 256, 256  # kernels_cu/attention.cu; the softmax runs one warp per row
ATTENTION_CHOICES = ("auto", "cudnn", "llmc")

# ----------------------------------------------------------------------------
# which implementation


def choose_attention(requested, device, precision, info=None):
    """('cudnn' or 'llmc', why) for --attention auto|cudnn|llmc on `device` in `precision` (info: the GPU's
    DeviceInfo). auto takes cuDNN for bf16 on a GPU of sm_80 or newer where the frontend and libcudnn load;
    asking for cudnn where it cannot run is one LlmcError line saying what is missing."""
    if requested not in ATTENTION_CHOICES:
        raise LlmcError(f"--attention {requested}: expected one of {', '.join(ATTENTION_CHOICES)}")
    if requested == "llmc":
        return "llmc", "--attention llmc"
    if device != "cuda" or precision != "bf16":
        why = "--device cpu runs the NumPy reference" if device != "cuda" else "cuDNN attention is bf16 only"
        if requested == "cudnn":
            raise LlmcError(f"--attention cudnn: runs with --device cuda --precision bf16 only ({why})")
        return "llmc", why
    cc = int(info.compute_capability)
    if cc < attention_cudnn.MIN_COMPUTE_CAPABILITY:
        why = f"sm_{cc}: cuDNN flash attention needs sm_{attention_cudnn.MIN_COMPUTE_CAPABILITY} or newer"
        if requested == "cudnn":
            raise LlmcError(f"--attention cudnn: {why}")
        return "llmc", why
    try:
        cudnn = attention_cudnn.load()
    except LlmcError as e:
        if requested == "cudnn":
            raise LlmcError(f"--attention cudnn: {e}") from None
        return "llmc", str(e)
    return "cudnn", f"{'--attention cudnn' if requested == 'cudnn' else 'bf16'} on sm_{cc}, " \
        f"{attention_cudnn.versions(cudnn)}"

# ----------------------------------------------------------------------------
# NumPy reference


def _view(a, shape):
    """a reshaped to `shape` as a view; refuses to hand back a copy, which would swallow the writes."""
    v = a.reshape(shape)
    if not np.may_share_memory(v, a):
        raise ValueError(f"array of shape {a.shape} and strides {a.strides} cannot be viewed as {shape}")
    return v


def _upper(T):
    """(T,T) boolean mask of the future positions j > i."""
    return np.triu(np.ones((T, T), dtype=bool), k=1)


def attention_forward(out, qkvr, att, inp, NH, workspace=None):
    """inp (B,T,3C) rows [q|k|v] -> qkvr (3,B,NH,T,HS) permuted q,k,v; att (B,NH,T,T) causal softmax
    probabilities of q k^T / sqrt(HS) (exact 0 for j > i); out (B,T,C) = att @ v, heads concatenated.
    On the GPU inp is overwritten (it is the scratch of att @ v).
    With att the (B,NH,T) f32 statistics, cuDNN: qkvr is inp, only read, and `workspace` is cuDNN's (uint8)."""
    if att.ndim == 3:
        return attention_cudnn.attention_forward(out, att, inp, NH, workspace)
    if on_device(out):
        return _forward_gpu(out, qkvr, att, inp, NH)
    B, T, C3 = inp.shape
    C = C3 // 3
    HS = C // NH
    np.copyto(qkvr, inp.reshape(B, T, 3, NH, HS).transpose(2, 0, 3, 1, 4))
    q, k, v = qkvr[0], qkvr[1], qkvr[2]
    np.matmul(q, k.swapaxes(-1, -2), out=att)  # preatt, unscaled
    att[:, :, _upper(T)] = -np.inf  # the diagonal is never masked, so every row max is finite
    att -= att.max(axis=-1, keepdims=True)
    att *= 1.0 / math.sqrt(HS)
    np.exp(att, out=att)  # exp(-inf) = +0.0 exactly above the diagonal
    att /= att.sum(axis=-1, keepdims=True)
    y = np.matmul(att, v)  # (B,NH,T,HS)
    np.copyto(_view(out, (B, T, NH, HS)), y.transpose(0, 2, 1, 3))


def attention_backward(dinp, dqkvr, datt, scratch, dout, qkvr, att, NH, workspace=None):
    """dout (B,T,C) -> dinp (B,T,3C) = gradient w.r.t. the forward's inp (assigned).

    Buffers: scratch (B*T*C elements, the forward's `out`, no longer needed) receives the permuted dout
    (B,NH,T,HS); datt (B,NH,T,T) receives dout_h @ v^T and then dpreatt; dqkvr (3,B,NH,T,HS) receives dq, dk, dv.
    qkvr and att as saved by the forward.
    With att the (B,NH,T) f32 statistics, cuDNN: qkvr is the forward's inp (B,T,3C), scratch its out (B,T,C),
    read as flash attention's O; dqkvr and datt are not used.
    """
    if att.ndim == 3:
        return attention_cudnn.attention_backward(dinp, dout, qkvr, scratch.reshape(dout.shape), att, NH, workspace)
    if on_device(dinp):
        return _backward_gpu(dinp, dqkvr, datt, scratch, dout, qkvr, att, NH)
    B, T, C = dout.shape
    HS = C // NH
    scale = 1.0 / math.sqrt(HS)
    q, k, v = qkvr[0], qkvr[1], qkvr[2]
    dq, dk, dv = dqkvr[0], dqkvr[1], dqkvr[2]
    dy = _view(scratch, (B, NH, T, HS))
    np.copyto(dy, dout.reshape(B, T, NH, HS).transpose(0, 2, 1, 3))
    np.matmul(dy, v.swapaxes(-1, -2), out=datt)
    np.matmul(att.swapaxes(-1, -2), dy, out=dv)
    # softmax backward in place: dpreatt = s * att * (datt - sum_k att * datt), explicit 0 for j > i
    rowdot = np.sum(att * datt, axis=-1, keepdims=True)
    datt -= rowdot
    datt *= att
    datt *= scale
    datt[:, :, _upper(T)] = 0.0  # att is 0 there already; this also turns -0.0 into +0.0
    np.matmul(datt, k, out=dq)
    np.matmul(datt.swapaxes(-1, -2), q, out=dk)
    np.copyto(_view(dinp, (B, T, 3, NH, HS)), dqkvr.transpose(1, 3, 0, 2, 4))

# ----------------------------------------------------------------------------
# launchers (kernels_cu/attention.cu, cuBLAS for the products)


def _dims(B, T, NH, HS, p):
    X = x128_size(p)
    assert HS % X == 0, f"attention: head size {HS} must be a multiple of {X}"
    permute_grid = (math.ceil(B * NH * T * HS / (PERMUTE_BLOCK * X)),)
    softmax_grid = (math.ceil(B * NH * T / (SOFTMAX_BLOCK // 32)),)
    return permute_grid, softmax_grid, (np.int32(B), np.int32(T), np.int32(NH), np.int32(HS))


def _forward_gpu(out, qkvr, att, inp, NH):
    B, T, C3 = inp.shape
    C = C3 // 3
    HS = C // NH
    BNH = B * NH
    p = precision_of(out)
    permute_grid, softmax_grid, dims = _dims(B, T, NH, HS, p)
    q, k, v = qkvr[0], qkvr[1], qkvr[2]
    launch("attention", "permute_kernel", permute_grid, (PERMUTE_BLOCK,), (q, k, v, inp) + dims, p)
    att3 = att.reshape(BNH, T, T)
    blas.batched_matmul(att3, q.reshape(BNH, T, HS), k.reshape(BNH, T, HS), trans_b=True)  # preatt, unscaled
    launch("attention", "softmax_forward_kernel", softmax_grid, (SOFTMAX_BLOCK,),
           (att, att, np.int32(BNH), np.int32(T), np.float32(1.0 / math.sqrt(HS))), p)
    y = inp.reshape(-1)[:B * T * C].reshape(BNH, T, HS)  # inp is free once permuted
    blas.batched_matmul(y, att3, v.reshape(BNH, T, HS))
    launch("attention", "unpermute_kernel", permute_grid, (PERMUTE_BLOCK,), (out, y) + dims, p)


def _backward_gpu(dinp, dqkvr, datt, scratch, dout, qkvr, att, NH):
    B, T, C = dout.shape
    HS = C // NH
    BNH = B * NH
    p = precision_of(dinp)
    permute_grid, softmax_grid, dims = _dims(B, T, NH, HS, p)
    dy = scratch.reshape(-1)[:B * T * C].reshape(BNH, T, HS)
    launch("attention", "unpermute_backward_kernel", permute_grid, (PERMUTE_BLOCK,), (dy, dout) + dims, p)
    q, k, v = (x.reshape(BNH, T, HS) for x in (qkvr[0], qkvr[1], qkvr[2]))
    dq, dk, dv = (x.reshape(BNH, T, HS) for x in (dqkvr[0], dqkvr[1], dqkvr[2]))
    att3, datt3 = att.reshape(BNH, T, T), datt.reshape(BNH, T, T)
    blas.batched_matmul(datt3, dy, v, trans_b=True)   # datt = dy @ v^T
    blas.batched_matmul(dv, att3, dy, trans_a=True)   # dv = att^T @ dy
    launch("attention", "softmax_backward_kernel", softmax_grid, (SOFTMAX_BLOCK,),
           (datt3, datt3, att3, np.int32(BNH), np.int32(T), np.float32(1.0 / math.sqrt(HS))), p)
    blas.batched_matmul(dq, datt3, k)                 # dq = dpreatt @ k
    blas.batched_matmul(dk, datt3, q, trans_a=True)   # dk = dpreatt^T @ q
    launch("attention", "permute_backward_kernel", permute_grid, (PERMUTE_BLOCK,),
           (dinp, dqkvr[0], dqkvr[1], dqkvr[2]) + dims, p)
