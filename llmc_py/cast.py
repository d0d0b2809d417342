"""Copies from floatX to f32 buffers (kernels_cu/cast.cu): the first update widens the floatX params into the
f32 master weights. (The kernel file also has the f32 -> floatX direction; nothing in training needs it.)

Design decision: llm.c's sliced layout, as AdamW uses it (num_slices slices of n elements, dst slice y at
y*dst_stride, src slice y at y*src_stride), so one call copies a tensor's ZeRO-1 parts of every layer. floatX -> f32
is an exact widening; on the CPU it is a float32 copy.
"""
import math

import numpy as np

from llmc_py.cuda import launch, on_device, precision_of

CAST_BLOCK = 512  # kernels_cu/cast.cu

# ----------------------------------------------------------------------------
# NumPy reference


def _copy_slices(dst, src, n, num_slices, dst_stride, src_stride):
    for y in range(num_slices):
        dst[y * dst_stride:y * dst_stride + n] = src[y * src_stride:y * src_stride + n]


def cast_floatx_to_f32(dst, src, n=None, num_slices=1, dst_stride=0, src_stride=0):
    """dst (f32) = src (floatX), exact, slice by slice."""
    n = src.size if n is None else n
    if on_device(dst):
        return _launch(dst, src, n, num_slices, dst_stride, src_stride)
    _copy_slices(dst, src, n, num_slices, dst_stride, src_stride)

# ----------------------------------------------------------------------------
# launcher


def _launch(dst, src, n, num_slices, dst_stride, src_stride):
    launch("cast", "cast_floatX_to_f32_kernel", (math.ceil(n / CAST_BLOCK), num_slices), (CAST_BLOCK,),
           (dst, src, np.uint64(n), np.int64(dst_stride), np.int64(src_stride)), precision_of(src))
