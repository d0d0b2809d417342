"""LayerNorm over the last axis (C), eps 1e-5, population variance; plus the fused residual-add + LayerNorm.

Design decision: activations are overwritten (=) and gradients accumulate (+=), including dinp: the
LayerNorm's input is the residual stream, whose gradient dresidual also receives the skip connection, so
layernorm_backward adds into it rather than assigning. mean and rstd are saved in float32 by the forward
and reused by the backward instead of being recomputed, and the fused residual op normalizes the residual
as stored (llm.c normalizes its rounded floatX value), so the backward sees exactly what the forward used.
On the GPU (kernels_cu/layernorm.cu) dweight and dbias are summed without atomics: the backward's blocks write
f32 partials into a caller-given scratch (`backward_scratch_floats`), and a second kernel adds them in block order.
"""
import math

import numpy as np

from llmc_py.cuda import NULL, device_info, launch, on_device, precision_of, x128_size

LN_EPS = 1e-5
LN_BWD_BLOCK, LN_REDUCE_BLOCK = 512, 256  # kernels_cu/layernorm.cu
SMEM_LIMIT = 48 << 10                      # dynamic shared memory without an opt-in attribute

# ----------------------------------------------------------------------------
# NumPy reference


def layernorm_forward(out, mean, rstd, inp, weight, bias):
    """out (...,C) = (inp - mean) * rstd * weight + bias; mean, rstd (...) float32, rstd = 1/sqrt(var + eps).

    Two passes as llm.c: the mean first, then the variance of (inp - mean). out must not alias inp.
    """
    if on_device(out):
        return _forward_gpu("layernorm_forward_kernel", (out, mean, rstd, inp), inp, weight, bias)
    np.mean(inp, axis=-1, out=mean)
    np.subtract(inp, mean[..., None], out=out)  # out holds x - mean from here on
    var = np.mean(np.square(out), axis=-1)
    var += LN_EPS
    np.sqrt(var, out=var)
    np.divide(1.0, var, out=rstd)
    out *= rstd[..., None]
    out *= weight
    out += bias


def fused_residual_forward(residual, normed, mean, rstd, inp1, inp2, weight, bias):
    """residual = inp1 + inp2; normed = layernorm(residual) with mean, rstd saved. On the GPU the statistics use
    the residual as stored, rounded to floatX."""
    if on_device(residual):
        return _forward_gpu("fused_residual_forward_kernel", (residual, normed, mean, rstd, inp1, inp2), inp1,
                            weight, bias)
    np.add(inp1, inp2, out=residual)
    layernorm_forward(normed, mean, rstd, residual, weight, bias)


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, scratch=None):
    """dinp (...,C) += dx; dweight (C,) += sum(dout * xhat); dbias (C,) += sum(dout). All accumulate.

    With xhat = (inp - mean) * rstd and dnorm = dout * weight:
    dx = (dnorm - mean_C(dnorm) - xhat * mean_C(dnorm * xhat)) * rstd.
    GPU only: scratch, f32 of at least backward_scratch_floats(C) elements, holds the per-block partials.
    """
    if on_device(dinp):
        return _backward_gpu(dinp, dweight, dbias, dout, inp, weight, mean, rstd, scratch)
    C = inp.shape[-1]
    xhat = inp - mean[..., None]
    xhat *= rstd[..., None]
    dout_rows = dout.reshape(-1, C)  # reads only: a copy would be harmless
    dbias += dout_rows.sum(axis=0)
    dweight += (dout * xhat).reshape(-1, C).sum(axis=0)
    dnorm = dout * weight
    dnorm_mean = dnorm.mean(axis=-1, keepdims=True)
    dnorm_xhat_mean = np.mean(dnorm * xhat, axis=-1, keepdims=True)
    dnorm -= dnorm_mean
    xhat *= dnorm_xhat_mean
    dnorm -= xhat
    dnorm *= rstd[..., None]
    dinp += dnorm

# ----------------------------------------------------------------------------
# launchers (kernels_cu/layernorm.cu)


def _forward_gpu(kernel, head, inp, weight, bias):
    """layernorm_forward_kernel / fused_residual_forward_kernel: one warp per row, W warps per block with the
    block's rows in shared memory (W*C floatX, at most 48 KiB)."""
    C = inp.shape[-1]
    N = inp.size // C
    p = precision_of(inp)
    X = x128_size(p)
    assert C % X == 0, f"layernorm: C={C} must be a multiple of {X}"
    row_bytes = C * inp.dtype.itemsize
    warps = max(1, min(8, SMEM_LIMIT // row_bytes))
    if warps * row_bytes > SMEM_LIMIT:
        raise ValueError(f"layernorm: a row of C={C} does not fit the {SMEM_LIMIT}-byte shared memory")
    args = tuple(NULL if a is None else a for a in head) + (weight, bias, np.int32(N), np.int32(C))
    launch("layernorm", kernel, (math.ceil(N / warps),), (32 * warps,), args, p, shared_mem=warps * row_bytes)


def backward_blocks(num_sms=None):
    """The backward's grid: 2 blocks per SM (llm.c's choice)."""
    return 2 * (device_info().num_sms if num_sms is None else num_sms)


def backward_scratch_floats(C, num_sms=None):
    """f32 elements of scratch the backward needs: its blocks' [dbias, dweight] partials."""
    return backward_blocks(num_sms) * 2 * C


def _backward_gpu(dinp, dweight, dbias, dout, inp, weight, mean, rstd, scratch):
    C = inp.shape[-1]
    N = inp.size // C
    p = precision_of(dinp)
    X = x128_size(p)
    assert C % X == 0, f"layernorm: C={C} must be a multiple of {X}"
    G = backward_blocks()
    if scratch is None or scratch.dtype != np.float32 or scratch.size < G * 2 * C:
        raise ValueError(f"layernorm_backward on the GPU needs an f32 scratch of at least {G * 2 * C} elements")
    R = max(1, LN_BWD_BLOCK // (C // X))  # row groups of the kernel's column pass
    shared = 2 * R * C * 4
    if shared > SMEM_LIMIT:
        raise ValueError(f"layernorm_backward: C={C} needs {shared} bytes of shared memory, more than {SMEM_LIMIT}")
    launch("layernorm", "layernorm_backward_kernel", (G,), (LN_BWD_BLOCK,),
           (dinp, scratch, dout, inp, weight, mean, rstd, np.int32(N), np.int32(C)), p, shared_mem=shared)
    launch("layernorm", "layernorm_backward_reduce_kernel", (math.ceil(C / LN_REDUCE_BLOCK),), (LN_REDUCE_BLOCK,),
           (dweight, dbias, scratch, np.int32(G), np.int32(C)), p)
