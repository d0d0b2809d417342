// Sum of squares of floatX gradients, the input of global-norm clipping (spec 9.4), deterministic.
//
// Design decision: no atomics. A fixed grid of blocks writes one f32 partial per block into its own slot of a
// slot array (+=, so several calls, e.g. the ZeRO-1 shard slices of every tensor, accumulate into the same
// slots), and then a single block adds the slots in a fixed tree and adds the total into out[0]. The value is
// reproducible for a given grid; the grid is fixed per GPU (llm.c: maxThreadsPerSM * numSMs / 512 blocks).
// The clip scale is computed here too, from the sum in device memory: the host reads the norm back once per
// step to print it, but the update never waits for the host to hand the scale back.

#include "common.cuh"

#define NORM_BLOCK 512
#define NORM_AGGREGATE_BLOCK 1024
#define CLIP_BLOCK 1

// ----------------------------------------------------------------------------
// kernels

// slots (gridDim.y * gridDim.x) f32 += per-block sums of squares of values (slice y at y*stride, count each).
// Grid (G_x, num_slices), block NORM_BLOCK: block (bx, y) grid-strides over slice y from bx*512 + thread, f32,
// and adds its block sum into slots[y*G_x + bx]. The caller zeroes the slots before the first call of a step and
// keeps G_x * num_slices <= the slot count. Fast: grid-stride loop with coalesced loads, one write per block.
extern "C" __global__ void __launch_bounds__(NORM_BLOCK) global_norm_squared_kernel(
        float* __restrict__ slots, const floatX* __restrict__ values, size_t count, ptrdiff_t stride) {
    __shared__ float red[WARP_SIZE];
    const floatX* x = values + (size_t)blockIdx.y * stride;
    float acc = 0.0f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        const float f = to_float(x[i]);
        acc += f * f;
    }
    const float block_sum = block_reduce_sum(acc, red);
    if (threadIdx.x == 0) {
        const size_t slot = (size_t)blockIdx.y * gridDim.x + blockIdx.x;
        slots[slot] = slots[slot] + block_sum;
    }
}

// out[0] += sum of slots[0..num_slots). One block: grid 1, block NORM_AGGREGATE_BLOCK; thread i adds slots
// i, i+1024, ... in order, then a fixed block tree. Deterministic by construction.
extern "C" __global__ void __launch_bounds__(NORM_AGGREGATE_BLOCK) global_norm_aggregate_kernel(
        float* __restrict__ out, const float* __restrict__ slots, int num_slots) {
    __shared__ float red[WARP_SIZE];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < num_slots; i += blockDim.x) { acc += slots[i]; }
    const float total = block_reduce_sum(acc, red);
    if (threadIdx.x == 0) { out[0] += total; }
}

// scale[0] = max_norm / norm if the global norm = sqrt(norm_squared[0]) exceeds max_norm, else 1 (llm.c's
// clipping). In double, rounded to f32 once: bit for bit the host's float32(max_norm / sqrt(double(sum))).
// One thread: grid 1, block CLIP_BLOCK. A single scalar: launch cost is all there is.
extern "C" __global__ void __launch_bounds__(CLIP_BLOCK) grad_clip_scale_kernel(
        float* __restrict__ scale, const float* __restrict__ norm_squared, float max_norm) {
    const double norm = sqrt((double)norm_squared[0]);
    scale[0] = (norm > (double)max_norm) ? (float)((double)max_norm / norm) : 1.0f;
}
