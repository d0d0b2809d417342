"""Linear layer, nn.Linear layout: out (..., OC) = inp (..., C) @ weight (OC, C)^T + bias, plus GELU fusions.

Design decision: the GELU that follows a matmul is fused on the GEMM's *output* side in both directions,
as cuBLASLt epilogues allow and as llm.c mainline does, so `pre_gelu` means different tensors in the two
functions. Forward (fc layer, GELU_AUX_BIAS epilogue): pre_gelu receives inp @ W^T + b and out = gelu of it.
Backward (fcproj layer, DGELU epilogue): pre_gelu is the pre-GELU activation whose GELU was this layer's
*input* (fch, shaped like dinp), and dinp = (dout @ W) * gelu'(pre_gelu); dout itself is never modified,
and dweight and dbias use the plain dout. In the backward dinp is assigned (=), dweight and dbias
accumulate (+=).
"""
import numpy as np

from llmc_py.gelu import gelu_backward_inplace, gelu_forward

_DWEIGHT_BLOCK = 4096  # dweight rows per += : the LM head's (Vp, C) product in 13 slabs, not one 154 MB temporary

# ----------------------------------------------------------------------------
# NumPy reference


def _rows(a, n):
    """(..., n) output array as an (N, n) view; refuses to hand back a copy, which would swallow the writes."""
    rows = a.reshape(-1, n)
    if not np.may_share_memory(rows, a):
        raise ValueError(f"array of shape {a.shape} and strides {a.strides} cannot be viewed as rows of {n}")
    return rows


def matmul_forward(out, inp, weight, bias=None, pre_gelu=None):
    """out (...,OC) = inp (...,C) @ weight (OC,C)^T + bias (OC,) [bias optional].

    With pre_gelu (shaped like out): pre_gelu = inp @ weight^T + bias and out = gelu(pre_gelu).
    """
    OC, C = weight.shape
    target = out if pre_gelu is None else pre_gelu
    np.matmul(inp.reshape(-1, C), weight.T, out=_rows(target, OC))
    if bias is not None:
        target += bias
    if pre_gelu is not None:
        assert pre_gelu.shape == out.shape, "matmul_forward: pre_gelu must be shaped like out"
        gelu_forward(out, pre_gelu)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, pre_gelu=None):
    """dinp (...,C) = dout (...,OC) @ weight; dweight (OC,C) += dout^T @ inp; dbias (OC,) += column sums of dout.

    dbias may be None (no bias). With pre_gelu (shaped like dinp, the pre-GELU values whose GELU is inp):
    dinp = (dout @ weight) * gelu'(pre_gelu), the gradient w.r.t. pre_gelu.
    """
    OC, C = weight.shape
    dout_rows = dout.reshape(-1, OC)
    np.matmul(dout_rows, weight, out=_rows(dinp, C))
    if pre_gelu is not None:
        assert pre_gelu.shape == dinp.shape, "matmul_backward: pre_gelu must be shaped like dinp"
        gelu_backward_inplace(dinp, pre_gelu)
    inp_rows = inp.reshape(-1, C)
    for start in range(0, OC, _DWEIGHT_BLOCK):  # one block unless OC > 4096 (LM head): 2.5x faster there
        block = slice(start, start + _DWEIGHT_BLOCK)
        dweight[block] += np.matmul(dout_rows[:, block].T, inp_rows)
    if dbias is not None:
        dbias += dout_rows.sum(axis=0)
