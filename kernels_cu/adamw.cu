// AdamW update (spec 9.6) over one parameter tensor, or its ZeRO-1 shard, in slices; plus init-from-master.
//
// Design decision: the launch geometry is part of the result. Stochastic rounding draws its noise from the
// thread's position (threadIdx.x, blockIdx.x*512 + blockIdx.y) and the tensor's seed (spec 7.3), so both kernels
// keep llm.c's mapping exactly: block ADAMW_BLOCK = 512, grid (ceil(n/512), num_slices), element idx =
// blockIdx.x*512 + threadIdx.x of slice blockIdx.y; then the bf16 parameters match llm.c bit for bit given the
// same f32 values. Slices: num_slices = L for the per-layer tensors 2..13, else 1; params and grads of slice y
// start at y*w_stride, m, v and master (the shard layout of spec 11.3) at y*s_stride.
// Everything that changes from step to step (learning rate, weight decay, the bias corrections of step t, the
// clip scale, the rounding seed) is read from device memory, never passed by value: a step captured as a CUDA
// graph freezes kernel arguments, and the host writes these values before every replay.

#include "common.cuh"

#define ADAMW_BLOCK 512
// hyper[]: the host-written values of one update (llmc_py/adamw.py's adamw_hyper)
#define HYPER_LR 0
#define HYPER_WEIGHT_DECAY 1
#define HYPER_BETA1_CORRECTION 2
#define HYPER_BETA2_CORRECTION 3

// ----------------------------------------------------------------------------
// kernels

// llm.c's lerp(start, end, weight) = end*weight + start*(1 - weight) as two fused multiply-adds
__device__ __forceinline__ float lerp2(float start, float end, float weight) {
    return fmaf(weight, end, fmaf(-weight, start, start));
}

// params, grads: floatX, slice y at y*w_stride; m, v, master: f32, slice y at y*s_stride; master may be null.
// n = elements per slice. hyper: f32 [lr, weight decay, beta1_correction, beta2_correction] (corrections
// 1 - beta^t computed on the host, as llm.c); grad_scale: f32 [1], the clip scale; seed: u32 [1]; decay: 0 for
// the tensors llm.c does not decay. Per element: g = grad_scale * grad; m = lerp(g, m, beta1);
// v = lerp(g*g, v, beta2); p_old = master or param;
// p = p_old - lr * (m/beta1_correction / (sqrt(v/beta2_correction) + eps) + wd * p_old);
// param = stochastic_round(p, seed); master = p.
// Launch: grid (ceil(n / ADAMW_BLOCK), num_slices), block ADAMW_BLOCK. Fast: one pass, every access coalesced;
// the six scalars are the same address for every thread (one cached broadcast load each).
extern "C" __global__ void __launch_bounds__(ADAMW_BLOCK) adamw_kernel(
        floatX* __restrict__ params, float* __restrict__ master, const floatX* __restrict__ grads,
        float* __restrict__ m, float* __restrict__ v, size_t n, ptrdiff_t w_stride, ptrdiff_t s_stride,
        const float* __restrict__ hyper, const float* __restrict__ grad_scale, const unsigned int* __restrict__ seed,
        float beta1, float beta2, float eps, int decay) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if ((size_t)idx >= n) { return; }
    const float lr = hyper[HYPER_LR];
    const float weight_decay = decay ? hyper[HYPER_WEIGHT_DECAY] : 0.0f;
    const float beta1_correction = hyper[HYPER_BETA1_CORRECTION];
    const float beta2_correction = hyper[HYPER_BETA2_CORRECTION];
    const size_t wi = (size_t)blockIdx.y * w_stride + idx;
    const size_t si = (size_t)blockIdx.y * s_stride + idx;
    const float grad = grad_scale[0] * to_float(grads[wi]);
    const float m_new = lerp2(grad, m[si], beta1);
    m[si] = m_new;
    const float v_new = lerp2(grad * grad, v[si], beta2);
    v[si] = v_new;
    const float m_hat = m_new / beta1_correction;
    const float v_hat = v_new / beta2_correction;
    const float p_old = (master != nullptr) ? master[si] : to_float(params[wi]);
    const float p = p_old - (lr * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * p_old));
    stochastic_rounding(p, &params[wi], seed[0]);
    if (master != nullptr) { master[si] = p; }
}

// params (floatX, slice y at y*w_stride) = stochastic_round(master (f32, slice y at y*s_stride), seed): rebuilds
// the floatX parameters from master weights (resume). Same launch and thread mapping as adamw_kernel, so with the
// same seed the rounding noise of every element is the one the update would use. Never captured (it runs once,
// at a resume), so the seed is an argument.
extern "C" __global__ void __launch_bounds__(ADAMW_BLOCK) init_from_master_kernel(
        floatX* __restrict__ params, const float* __restrict__ master, size_t n, ptrdiff_t w_stride,
        ptrdiff_t s_stride, unsigned int seed) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if ((size_t)idx >= n) { return; }
    stochastic_rounding(master[(size_t)blockIdx.y * s_stride + idx], &params[(size_t)blockIdx.y * w_stride + idx],
                        seed);
}
