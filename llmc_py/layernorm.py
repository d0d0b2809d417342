"""LayerNorm over the last axis (C), eps 1e-5, population variance; plus the fused residual-add + LayerNorm.

Design decision: activations are overwritten (=) and gradients accumulate (+=), including dinp: the
LayerNorm's input is the residual stream, whose gradient dresidual also receives the skip connection, so
layernorm_backward adds into it rather than assigning. mean and rstd are saved in float32 by the forward
and reused by the backward instead of being recomputed, and the fused residual op normalizes the residual
as stored (llm.c normalizes its rounded floatX value), so the backward sees exactly what the forward used.
"""
import numpy as np

LN_EPS = 1e-5

# ----------------------------------------------------------------------------
# NumPy reference


def layernorm_forward(out, mean, rstd, inp, weight, bias):
    """out (...,C) = (inp - mean) * rstd * weight + bias; mean, rstd (...) float32, rstd = 1/sqrt(var + eps).

    Two passes as llm.c: the mean first, then the variance of (inp - mean). out must not alias inp.
    """
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
    """residual = inp1 + inp2; normed = layernorm(residual) with mean, rstd saved."""
    np.add(inp1, inp2, out=residual)
    layernorm_forward(normed, mean, rstd, residual, weight, bias)


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
    """dinp (...,C) += dx; dweight (C,) += sum(dout * xhat); dbias (C,) += sum(dout). All accumulate.

    With xhat = (inp - mean) * rstd and dnorm = dout * weight:
    dx = (dnorm - mean_C(dnorm) - xhat * mean_C(dnorm * xhat)) * rstd.
    """
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
