"""Linear layer, nn.Linear layout: out (..., OC) = inp (..., C) @ weight (OC, C)^T + bias, plus GELU fusions.

Design decision: the GELU that follows a matmul is fused on the GEMM's *output* side in both directions,
as cuBLASLt epilogues allow and as llm.c mainline does, so `pre_gelu` means different tensors in the two
functions. Forward (fc layer, GELU_AUX_BIAS epilogue): pre_gelu receives inp @ W^T + b and out = gelu of it.
Backward (fcproj layer, DGELU epilogue): pre_gelu is the pre-GELU activation whose GELU was this layer's
*input* (fch, shaped like dinp), and dinp = (dout @ W) * gelu'(pre_gelu); dout itself is never modified,
and dweight and dbias use the plain dout. In the backward dinp is assigned (=), dweight and dbias
accumulate (+=).
On the GPU every product is one row-major llmc_py.blas call: bf16 runs cuBLASLt with the bias / GELU_AUX_BIAS /
DGELU epilogues; fp32 runs cuBLAS SGEMM (TF32 with -f 1) plus kernels_cu/matmul.cu's bias add and gelu.cu's
kernels, or one of the --matmul variants for the forward (`variant`: "custom" = our tiled SGEMM kernel, "fp16" =
fp16 operands with f32 accumulation through GemmEx). dbias is our deterministic two-kernel column sum.
"""
import math

import numpy as np

from llmc_py import blas
from llmc_py.cuda import NULL, device_info, launch, on_device, precision_of, x128_size
from llmc_py.gelu import gelu_backward_inplace, gelu_forward

BIAS_BLOCK, BIAS_REDUCE_BLOCK, BIAS_ADD_BLOCK = 256, 256, 256  # kernels_cu/matmul.cu
GEMM_TILE, GEMM_THREADS = 128, 256
CAST_BLOCK = 512                                               # kernels_cu/cast.cu
VARIANTS = (None, "cublas", "custom", "fp16")

_DWEIGHT_BLOCK = 4096  # dweight rows per += : the LM head's (Vp, C) product in 13 slabs, not one 154 MB temporary

# ----------------------------------------------------------------------------
# NumPy reference


def _rows(a, n):
    """(..., n) output array as an (N, n) view; refuses to hand back a copy, which would swallow the writes."""
    rows = a.reshape(-1, n)
    if not np.may_share_memory(rows, a):
        raise ValueError(f"array of shape {a.shape} and strides {a.strides} cannot be viewed as rows of {n}")
    return rows


def matmul_forward(out, inp, weight, bias=None, pre_gelu=None, variant=None, scratch=None):
    """out (...,OC) = inp (...,C) @ weight (OC,C)^T + bias (OC,) [bias optional].

    With pre_gelu (shaped like out): pre_gelu = inp @ weight^T + bias and out = gelu(pre_gelu).
    GPU only: variant (fp32) "custom" or "fp16", see the module docstring; "fp16" needs scratch, a uint16 device
    buffer of at least fp16_scratch_elements(N, C, OC) elements.
    """
    if on_device(out):
        return _forward_gpu(out, inp, weight, bias, pre_gelu, variant, scratch)
    OC, C = weight.shape
    target = out if pre_gelu is None else pre_gelu
    np.matmul(inp.reshape(-1, C), weight.T, out=_rows(target, OC))
    if bias is not None:
        target += bias
    if pre_gelu is not None:
        assert pre_gelu.shape == out.shape, "matmul_forward: pre_gelu must be shaped like out"
        gelu_forward(out, pre_gelu)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, pre_gelu=None, scratch=None, fuse_gelu=False):
    """dinp (...,C) = dout (...,OC) @ weight; dweight (OC,C) += dout^T @ inp; dbias (OC,) += column sums of dout.

    dbias may be None (no bias). With pre_gelu (shaped like dinp, the pre-GELU values whose GELU is inp):
    dinp = (dout @ weight) * gelu'(pre_gelu), the gradient w.r.t. pre_gelu.
    GPU only: scratch, f32 of at least bias_scratch_floats(N, OC) elements, holds dbias's partial sums;
    fuse_gelu (bf16) folds gelu' into the GEMM as cuBLASLt's DGELU epilogue instead of a separate kernel.
    """
    if on_device(dinp):
        return _backward_gpu(dinp, dweight, dbias, dout, inp, weight, pre_gelu, scratch, fuse_gelu)
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

# ----------------------------------------------------------------------------
# launchers (llmc_py.blas for the products, kernels_cu/matmul.cu, gelu.cu and cast.cu around them)


def fp16_scratch_elements(N, C, OC):
    """uint16 elements the "fp16" variant needs: the fp16 copies of weight (OC, C) and inp (N, C)."""
    return OC * C + N * C


def _forward_gpu(out, inp, weight, bias, pre_gelu, variant, scratch):
    OC, C = weight.shape
    N = inp.size // C
    p = precision_of(out)
    if variant not in VARIANTS:
        raise ValueError(f"matmul_forward: unknown variant {variant!r}")
    target = out if pre_gelu is None else pre_gelu  # where inp @ W^T + bias lands
    inp2, target2 = inp.reshape(N, C), target.reshape(N, OC)
    if p == "bf16":
        if variant not in (None, "cublas"):
            raise ValueError(f"matmul variant {variant!r} exists in fp32 only")
        blas.matmul(out.reshape(N, OC), inp2, weight, trans_b=True, bias=bias,
                    gelu_aux=None if pre_gelu is None else target2)
        return
    if variant == "custom":
        launch("matmul", "matmul_forward_kernel", (math.ceil(OC / GEMM_TILE), math.ceil(N / GEMM_TILE)),
               (GEMM_THREADS,), (target, inp, weight, NULL if bias is None else bias, np.int32(N), np.int32(C),
                                 np.int32(OC)), p)
    else:
        if variant == "fp16":
            need = fp16_scratch_elements(N, C, OC)
            if scratch is None or scratch.dtype != np.uint16 or scratch.size < need:
                raise ValueError(f"matmul variant fp16 needs a uint16 scratch of at least {need} elements")
            w16, x16 = scratch[:OC * C], scratch[OC * C:OC * C + N * C]
            for dst, src in ((w16, weight), (x16, inp)):
                launch("cast", "cast_f32_to_f16_kernel", (math.ceil(src.size / CAST_BLOCK),), (CAST_BLOCK,),
                       (dst, src, np.uint64(src.size)), p)
            blas.matmul_f16(target2, x16.reshape(N, C), w16.reshape(OC, C), trans_b=True)
        else:
            blas.matmul(target2, inp2, weight, trans_b=True)
        if bias is not None:
            X = x128_size(p)
            assert OC % X == 0, f"matmul: OC={OC} must be a multiple of {X}"
            launch("matmul", "add_bias_kernel", (math.ceil(N * OC / (BIAS_ADD_BLOCK * X)),), (BIAS_ADD_BLOCK,),
                   (target, bias, np.int32(N), np.int32(OC)), p)
    if pre_gelu is not None:
        gelu_forward(out, pre_gelu)


def bias_grid(N, OC, precision, num_sms=None):
    """(G_x, G_y) of matmul_backward_bias_kernel: G_x column groups of 32 packets, G_y block rows filling about
    4 blocks per SM, never more than the 8-row tiles there are."""
    num_sms = device_info().num_sms if num_sms is None else num_sms
    gx = math.ceil(OC / (32 * x128_size(precision)))
    gy = max(1, min(math.ceil(N / (BIAS_BLOCK // 32)), (4 * num_sms) // gx))
    return gx, gy


def bias_scratch_floats(N, OC, precision, num_sms=None):
    """f32 elements of scratch the bias gradient needs: its (G_y, OC) partials."""
    return bias_grid(N, OC, precision, num_sms)[1] * OC


def _backward_gpu(dinp, dweight, dbias, dout, inp, weight, pre_gelu, scratch, fuse_gelu):
    OC, C = weight.shape
    N = dout.size // OC
    p = precision_of(dinp)
    dout2 = dout.reshape(N, OC)
    if dbias is not None:
        X = x128_size(p)
        assert OC % X == 0, f"matmul: OC={OC} must be a multiple of {X}"
        gx, gy = bias_grid(N, OC, p)
        if scratch is None or scratch.dtype != np.float32 or scratch.size < gy * OC:
            raise ValueError(f"matmul_backward: dbias needs an f32 scratch of at least {gy * OC} elements")
        launch("matmul", "matmul_backward_bias_kernel", (gx, gy), (BIAS_BLOCK,),
               (scratch, dout, np.int32(N), np.int32(OC)), p)
        launch("matmul", "matmul_backward_bias_reduce_kernel", (math.ceil(OC / BIAS_REDUCE_BLOCK),),
               (BIAS_REDUCE_BLOCK,), (dbias, scratch, np.int32(gy), np.int32(OC)), p)
    dinp2 = dinp.reshape(N, C)
    if pre_gelu is not None and fuse_gelu and p == "bf16":
        blas.matmul(dinp2, dout2, weight, dgelu_aux=pre_gelu.reshape(N, C))
    else:
        blas.matmul(dinp2, dout2, weight)
        if pre_gelu is not None:
            gelu_backward_inplace(dinp, pre_gelu)
    blas.matmul(dweight, dout2, inp.reshape(N, C), trans_a=True, accumulate=True)
