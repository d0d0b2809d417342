// Fused classifier: softmax cross-entropy over the real vocabulary and the start of the backward, in one kernel.
//
// Design decision: the logits are overwritten in place with dlogits = (softmax - onehot(target)) * dloss in
// floatX, so the largest activation (B,T,Vp) never needs a second buffer; only the V real columns are read and
// written, the padded columns V..Vp-1 stay exactly as they were. losses[bt] += -log p_target accumulates over
// micro steps. As in llm.c: max and sum online in f32, the reciprocal of the sum taken once, and -log of that p.

#include "common.cuh"

#define CLASSIFIER_BLOCK 1024

// ----------------------------------------------------------------------------
// kernels

// Online (max, sum of exp(x - max)) update with one 16-byte chunk of logits.
__device__ __forceinline__ void online_softmax_add(float& maxval, float& sumval, const float* x, int n) {
    float chunk_max = -LLMC_INF;
    for (int k = 0; k < n; k++) { chunk_max = fmaxf(chunk_max, x[k]); }
    const float new_max = fmaxf(maxval, chunk_max);
    float s = sumval * expf(maxval - new_max);
    for (int k = 0; k < n; k++) { s += expf(x[k] - new_max); }
    sumval = s;
    maxval = new_max;
}

// logits (BT, P) floatX, columns [0, V) read and then overwritten with dlogits; losses (BT) f32 +=;
// targets (BT) int32 in [0, V); dloss: f32 [1], every token's loss gradient (llm.c: 1/(B*T*grad_accum_steps)),
// in device memory like the targets, so a captured step replays with what the host wrote for this batch.
// One block per row: grid BT, block CLASSIFIER_BLOCK; P % x128::size == 0 (V need not be). Rows are taken from
// the last one backwards (llm.c does the same: the freshest logits of the preceding GEMM are still in L2).
// Fast: two passes over the row (statistics, then the write), both with 128-bit loads and stores across 1024
// threads; the statistics pass is one read thanks to the online max/sum; only thread 0 touches the target.
extern "C" __global__ void __launch_bounds__(CLASSIFIER_BLOCK) fused_classifier_kernel(
        floatX* __restrict__ logits, float* __restrict__ losses, const float* __restrict__ dloss,
        const int* __restrict__ targets, int BT, int V, int P) {
    __shared__ float red[WARP_SIZE];
    const int row = BT - 1 - blockIdx.x;
    floatX* x = logits + (size_t)row * P;
    const int full_chunks = V / x128::size;  // chunks entirely below V; the tail [full_chunks*size, V) is scalar

    float maxval = -LLMC_INF;
    float sumval = 0.0f;
    for (int i = threadIdx.x; i < full_chunks; i += blockDim.x) {
        const x128 p = load128(x + i * x128::size);
        float f[x128::size];
        for (int k = 0; k < x128::size; k++) { f[k] = p.get(k); }
        online_softmax_add(maxval, sumval, f, x128::size);
    }
    for (int v = full_chunks * x128::size + threadIdx.x; v < V; v += blockDim.x) {
        const float f = to_float(x[v]);
        online_softmax_add(maxval, sumval, &f, 1);
    }
    const float row_max = block_reduce_max(maxval, red);
    sumval = (maxval == -LLMC_INF) ? 0.0f : sumval * expf(maxval - row_max);  // threads that saw no column
    const float inv_sum = 1.0f / block_reduce_sum(sumval, red);

    const int target = targets[row];
    const float d = dloss[0];
    if (threadIdx.x == 0) {
        const float p = expf(to_float(x[target]) - row_max) * inv_sum;
        losses[row] -= logf(p);
    }
    __syncthreads();  // thread 0 read x[target] before anyone overwrites it
    for (int i = threadIdx.x; i < full_chunks; i += blockDim.x) {
        const int v0 = i * x128::size;
        x128 p = load128cs(x + v0);
        for (int k = 0; k < x128::size; k++) {
            const float prob = expf(p.get(k) - row_max) * inv_sum;
            p.set(k, (prob - (v0 + k == target ? 1.0f : 0.0f)) * d);
        }
        store128(x + v0, p);
    }
    for (int v = full_chunks * x128::size + threadIdx.x; v < V; v += blockDim.x) {
        const float prob = expf(to_float(x[v]) - row_max) * inv_sum;
        x[v] = to_floatX((prob - (v == target ? 1.0f : 0.0f)) * d);
    }
}
