// Copies between f32 and floatX buffers: master weights <-> floatX params, f32 host data onto a bf16 model; and
// f32 -> fp16 for the fp32 path's fp16 GEMM variant (--matmul fp16fc).
//
// Design decision: f32 -> floatX rounds to nearest even (deterministic; the stochastic rounding of parameters
// lives in adamw.cu), floatX -> f32 is an exact widening (llm.c initializes master weights that way). Both take
// llm.c's sliced 2-D layout, so one launch copies a tensor's per-layer ZeRO-1 shards: slice y of n elements
// starts at y*dst_stride in dst and y*src_stride in src; slices need no 16-byte alignment, hence scalar moves.

#include "common.cuh"

#define CAST_BLOCK 512

// ----------------------------------------------------------------------------
// kernels

// dst (floatX) = round_nearest(src (f32)). Grid (ceil(n / CAST_BLOCK), num_slices), block CAST_BLOCK.
// Fast: purely bandwidth bound; consecutive threads move consecutive elements.
extern "C" __global__ void __launch_bounds__(CAST_BLOCK) cast_f32_to_floatX_kernel(
        floatX* __restrict__ dst, const float* __restrict__ src, size_t n, ptrdiff_t dst_stride,
        ptrdiff_t src_stride) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n) { return; }
    dst[(size_t)blockIdx.y * dst_stride + idx] = to_floatX(src[(size_t)blockIdx.y * src_stride + idx]);
}

// dst (f32) = src (floatX), exact. Same launch as cast_f32_to_floatX_kernel.
extern "C" __global__ void __launch_bounds__(CAST_BLOCK) cast_floatX_to_f32_kernel(
        float* __restrict__ dst, const floatX* __restrict__ src, size_t n, ptrdiff_t dst_stride,
        ptrdiff_t src_stride) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n) { return; }
    dst[(size_t)blockIdx.y * dst_stride + idx] = to_float(src[(size_t)blockIdx.y * src_stride + idx]);
}

// dst (fp16 bit patterns) = round_nearest(src (f32)), 1-D: the operands of --matmul fp16fc's GemmEx. Grid
// ceil(n / CAST_BLOCK), block CAST_BLOCK. The conversion is PTX cvt.rn.f16.f32, so no cuda_fp16.h is needed and
// the kernel compiles the same in every precision.
extern "C" __global__ void __launch_bounds__(CAST_BLOCK) cast_f32_to_f16_kernel(
        unsigned short* __restrict__ dst, const float* __restrict__ src, size_t n) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n) { return; }
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(src[idx]));
    dst[idx] = h;
}
