"""Sum of squares of a flat gradient buffer, the input of llm.c's global-norm gradient clipping.

Design decision: the result accumulates (out[0] += ...) so ZeRO-1 shards, or several slices of one buffer,
add into the same slot before the cross-rank sum and the final sqrt. This NumPy oracle accumulates in
float64 (chunks of 8192 elements through BLAS ddot) and rounds to float32 once, when adding into out[0];
llm.c sums in float32 with a grid-dependent tree, so its value is the oracle's up to the float32 rounding
of its partial sums.
On the GPU (kernels_cu/global_norm.cu) a fixed grid writes one f32 partial per block into `slots`, and one
block adds the slots in a fixed tree into out[0]: deterministic for a given GPU. `global_sum` reuses that last
kernel for llm.c's deterministic sum of the per-token losses. `grad_clip_scale` turns the sum into llm.c's clip
scale where the sum lives (on the device for the GPU), so the update reads it without a trip through the host.
"""
import math

import numpy as np

from llmc_py.cuda import device_info, launch, on_device, precision_of, zero

NORM_BLOCK, NORM_AGGREGATE_BLOCK, CLIP_BLOCK = 512, 1024, 1  # kernels_cu/global_norm.cu

_CHUNK = 1 << 13  # a 64 KiB float64 copy at a time: cache-sized, and measured 2-5x faster than 1M-element chunks

# ----------------------------------------------------------------------------
# NumPy reference


def global_norm_squared(out, values, slots=None, n=None, num_slices=1, stride=0):
    """out: 1-element float32 array; out[0] += sum(values**2), accumulated in float64, one rounding to float32.

    With num_slices > 1, values holds num_slices slices of n elements, slice y at y*stride (a tensor's ZeRO-1
    parts, one per layer), added one after the other. GPU only: slots, f32 of at least
    norm_slots(num_slices) elements, takes the per-block partial sums."""
    if on_device(out):
        return _global_norm_squared_gpu(out, values, slots, values.size if n is None else n, num_slices, stride)
    if num_slices > 1 or n is not None:
        for y in range(num_slices):
            global_norm_squared(out, values.reshape(-1)[y * stride:y * stride + n])
        return
    flat = values.reshape(-1)
    total = np.float64(out[0])
    for start in range(0, flat.size, _CHUNK):  # chunks of the flat buffer, not a loop over B, T or C
        chunk = flat[start:start + _CHUNK].astype(np.float64)
        total += np.dot(chunk, chunk)
    out[0] = np.float32(total)


def global_sum(out, values, precision="fp32"):
    """out: 1-element float32 array; out[0] += sum(values), float32 values (the per-token losses): NumPy's float32
    sum on the host, one deterministic block on the GPU (precision picks the compiled kernel module)."""
    if on_device(out):
        launch("global_norm", "global_norm_aggregate_kernel", (1,), (NORM_AGGREGATE_BLOCK,),
               (out, values, np.int32(values.size)), precision)
        return
    out[0] += values.sum(dtype=np.float32)


def grad_clip_scale(scale, norm_squared, max_norm, precision="fp32"):
    """scale[0] = max_norm / sqrt(norm_squared[0]) when that norm exceeds max_norm, else 1 (llm.c's clipping),
    computed in float64 and rounded to float32 once; 1-element float32 arrays (device buffers on the GPU, where
    precision picks the compiled kernel module)."""
    if on_device(scale):
        launch("global_norm", "grad_clip_scale_kernel", (1,), (CLIP_BLOCK,),
               (scale, norm_squared, np.float32(max_norm)), precision)
        return
    max_norm, norm = float(np.float32(max_norm)), math.sqrt(float(norm_squared[0]))
    scale[0] = np.float32(max_norm / norm) if norm > max_norm else np.float32(1.0)

# ----------------------------------------------------------------------------
# launchers (kernels_cu/global_norm.cu)


def norm_blocks(info=None):
    """Blocks per slice of the sum-of-squares kernel: llm.c's maxThreadsPerSM * numSMs / 512."""
    info = device_info() if info is None else info
    return max(1, info.max_threads_per_sm * info.num_sms // NORM_BLOCK)


def norm_slots(num_slices=1, info=None):
    """f32 slots the GPU path needs for a call over num_slices slices."""
    return norm_blocks(info) * num_slices


def _global_norm_squared_gpu(out, values, slots, n, num_slices, stride):
    p = precision_of(values)
    gx = norm_blocks()
    used = gx * num_slices
    if slots is None or slots.dtype != np.float32 or slots.size < used:
        raise ValueError(f"global_norm_squared on the GPU needs an f32 slots buffer of at least {used} elements")
    if num_slices > 1 and values.size < (num_slices - 1) * stride + n:
        raise ValueError(f"global_norm_squared: {num_slices} slices of {n} every {stride} exceed {values.size}")
    slots = slots[:used]
    zero(slots)  # the kernel adds into its slot
    launch("global_norm", "global_norm_squared_kernel", (gx, num_slices), (NORM_BLOCK,),
           (slots, values, np.uint64(n), np.int64(stride)), p)
    launch("global_norm", "global_norm_aggregate_kernel", (1,), (NORM_AGGREGATE_BLOCK,),
           (out, slots, np.int32(used)), p)
