"""Encoder: token embedding plus position embedding, (B,T) int32 ids -> (B,T,C).

Design decision: the backward sums each token's gradient over all of its occurrences first (positions in
order) and then adds that sum to dwte once, as llm.c's bucketed kernel does (f32 sum per (token, channel),
then one += into the grad). In NumPy that is a stable sort of the ids and `np.add.reduceat` over runs;
measured on (4,64,768) with Vp=50304: 1.0 ms against 1.7 ms for `np.add.at` with ids drawn from 300
values, 1.7 ms each with all-distinct ids; `np.add.at` would also round after every occurrence instead of
once. dwte and dwpe accumulate (+=); `out` is overwritten.
On the GPU (kernels_cu/encoder.cu) the same grouping is a table the host writes from the token ids before each
backward (`write_wte_buckets`) and copies into device buffers with the ids: one block per (token, channel group)
owns its slice of dwte, so no atomics touch values, and both grads are rounded once (stochastically in bf16, with
the seed in device memory). The table has a fixed number of rows, min(B*T, Vp), so the launch is the same for
every batch and a backward captured as a CUDA graph replays for any ids.
"""
import math

import numpy as np

from llmc_py.cuda import launch, on_device, precision_of, x128_size

ENC_BLOCK = WTE_BLOCK = 256  # kernels_cu/encoder.cu

# ----------------------------------------------------------------------------
# NumPy reference


def encoder_forward(out, inp, wte, wpe):
    """out (B,T,C) = wte[inp] + wpe[:T]; inp int32 (B,T), wte (Vp,C), wpe (maxT,C). On the GPU inp is the
    device copy of the ids."""
    if on_device(out):
        return _encoder_forward_gpu(out, inp, wte, wpe)
    T = inp.shape[1]
    np.take(wte, inp, axis=0, out=out)
    out += wpe[:T]


def encoder_backward(dwte, dwpe, dout, inp, seed=None, bucket_info=None, workload=None):
    """dwte[tok] += sum of dout over the occurrences of tok; dwpe[:T] += dout summed over B.

    GPU only: the token grouping comes from bucket_info (rows, 4) and workload (>= B*T,), int32 device buffers
    written by write_wte_buckets from the ids (inp is not read there), and seed, a uint32 (1,) device buffer,
    drives the stochastic rounding."""
    if on_device(dwte):
        return _encoder_backward_gpu(dwte, dwpe, dout, seed, bucket_info, workload)
    B, T, C = dout.shape
    dwpe[:T] += dout.sum(axis=0)
    tokens = inp.reshape(-1)
    order = np.argsort(tokens, kind="stable")  # stable: occurrences summed in position order
    sorted_tokens = tokens[order]
    starts = np.flatnonzero(np.r_[True, sorted_tokens[1:] != sorted_tokens[:-1]])
    sums = np.add.reduceat(dout.reshape(B * T, C)[order], starts, axis=0)
    dwte[sorted_tokens[starts]] += sums  # token ids in sorted_tokens[starts] are unique


def wte_buckets(inp):
    """The wte-backward tables of kernels_cu/encoder.cu from host token ids (B,T): bucket_info int32 (nb, 4) rows
    [start, size, token, 0], one per distinct token, sorted by size descending then token; workload int32 (B*T,)
    the flat positions grouped by bucket, each group in increasing position (a stable argsort of the ids)."""
    tokens = np.ascontiguousarray(inp, dtype=np.int32).reshape(-1)
    order = np.argsort(tokens, kind="stable")
    uniq, start, size = np.unique(tokens[order], return_index=True, return_counts=True)
    by = np.lexsort((uniq, -size))
    info = np.zeros((len(uniq), 4), dtype=np.int32)
    info[:, 0], info[:, 1], info[:, 2] = start[by], size[by], uniq[by]
    return info, order.astype(np.int32)


def wte_bucket_rows(BT, Vp):
    """Rows of the bucket table for batches of up to BT tokens: the most distinct tokens such a batch holds."""
    return min(BT, Vp)


def write_wte_buckets(bucket_info, workload, inp):
    """Writes the tables of the ids inp (B,T) into host arrays: bucket_info int32 (rows*4,) with its rows past the
    batch's buckets zeroed, workload int32 (>= B*T,)."""
    info, order = wte_buckets(inp)
    table = bucket_info.reshape(-1, 4)
    table[:len(info)] = info
    table[len(info):] = 0
    workload[:order.size] = order

# ----------------------------------------------------------------------------
# launchers (kernels_cu/encoder.cu)


def _encoder_forward_gpu(out, inp, wte, wpe):
    B, T = inp.shape
    C = wte.shape[1]
    p = precision_of(out)
    X = x128_size(p)
    assert C % X == 0, f"encoder: C={C} must be a multiple of {X}"
    launch("encoder", "encoder_forward_kernel", (math.ceil(B * T * C / (ENC_BLOCK * X)),), (ENC_BLOCK,),
           (out, inp, wte, wpe, np.int32(B), np.int32(T), np.int32(C)), p)


def _encoder_backward_gpu(dwte, dwpe, dout, seed, bucket_info, workload):
    B, T, C = dout.shape
    p = precision_of(dwte)
    X = x128_size(p)
    assert C % X == 0, f"encoder: C={C} must be a multiple of {X}"
    if seed is None or bucket_info is None or workload is None:
        raise ValueError("encoder_backward on the GPU needs the seed, bucket_info and workload device buffers")
    launch("encoder", "wpe_backward_kernel", (math.ceil(T * C / (ENC_BLOCK * X)),), (ENC_BLOCK,),
           (dwpe, dout, np.int32(B), np.int32(T), np.int32(C), seed), p)
    launch("encoder", "wte_backward_kernel", (bucket_info.size // 4, math.ceil(C / (32 * X))), (WTE_BLOCK,),
           (dwte, bucket_info, workload, dout, np.int32(C), seed), p)
