// Attention, llm.c's non-cuDNN path minus the two GEMMs: permutes and the causal softmax, forward and backward.
// The products preatt = q @ k^T (unscaled) and y = att @ v and their backward are cuBLAS strided-batched GEMMs.
//
// Design decision: the softmax owns the causal mask and the 1/sqrt(HS) scale. It reads unscaled preatt, applies
// the scale inside the exponent (exp(s * (x - max))), keeps max and sum online in f32, and writes every entry of
// the (T,T) row: probabilities for j <= i and exact zeros above the diagonal, so a stale buffer never leaks into
// the att @ v GEMM or the backward. The backward writes explicit zeros there too.
// Layouts: inp (B,T,3,NH,HS) = the QKV matmul output (B,T,3C); q, k, v (B,NH,T,HS) each, llm.c keeps them
// consecutive in qkvr (q at 0, k at B*T*C, v at 2*B*T*C); att, preatt (B,NH,T,T); y, out (B,T,C) = (B,T,NH,HS).
// The permutes index in 32-bit int (B*T*3C < 2^31; 64-bit divisions cost ~10x more), the softmax rows in size_t.

#include "common.cuh"

#define PERMUTE_BLOCK 256
#define SOFTMAX_BLOCK 256  // 8 warps, one row each

// ----------------------------------------------------------------------------
// kernels

// q, k, v (B,NH,T,HS) <- inp (B,T,3,NH,HS). One thread per 16-byte chunk of q (and the same chunk of k and v):
// grid ceil(B*NH*T*HS / (PERMUTE_BLOCK*x128::size)), block PERMUTE_BLOCK; HS % x128::size == 0.
// Fast: both sides are contiguous along HS, so each thread moves three 128-bit words and writes coalesced.
extern "C" __global__ void __launch_bounds__(PERMUTE_BLOCK) permute_kernel(
        floatX* __restrict__ q, floatX* __restrict__ k, floatX* __restrict__ v, const floatX* __restrict__ inp,
        int B, int T, int NH, int HS) {
    const int idx = (blockIdx.x * blockDim.x + threadIdx.x) * x128::size;
    if (idx >= B * NH * T * HS) { return; }
    const int d = idx % HS;
    const int t = (idx / HS) % T;
    const int h = (idx / (HS * T)) % NH;
    const int b = idx / (HS * T * NH);
    const int C = NH * HS;
    const int src = (b * T + t) * 3 * C + h * HS + d;
    store128(q + idx, load128cs(inp + src));
    store128(k + idx, load128cs(inp + src + C));
    store128(v + idx, load128cs(inp + src + 2 * C));
}

// dinp (B,T,3,NH,HS) <- dq, dk, dv (B,NH,T,HS): the inverse of permute_kernel, same launch.
extern "C" __global__ void __launch_bounds__(PERMUTE_BLOCK) permute_backward_kernel(
        floatX* __restrict__ dinp, const floatX* __restrict__ dq, const floatX* __restrict__ dk,
        const floatX* __restrict__ dv, int B, int T, int NH, int HS) {
    const int idx = (blockIdx.x * blockDim.x + threadIdx.x) * x128::size;
    if (idx >= B * NH * T * HS) { return; }
    const int d = idx % HS;
    const int t = (idx / HS) % T;
    const int h = (idx / (HS * T)) % NH;
    const int b = idx / (HS * T * NH);
    const int C = NH * HS;
    const int dst = (b * T + t) * 3 * C + h * HS + d;
    store128(dinp + dst, load128cs(dq + idx));
    store128(dinp + dst + C, load128cs(dk + idx));
    store128(dinp + dst + 2 * C, load128cs(dv + idx));
}

// out (B,T,NH,HS) <- y (B,NH,T,HS): heads concatenated back into channels. One thread per 16-byte chunk of y:
// grid ceil(B*NH*T*HS / (PERMUTE_BLOCK*x128::size)), block PERMUTE_BLOCK; HS % x128::size == 0.
extern "C" __global__ void __launch_bounds__(PERMUTE_BLOCK) unpermute_kernel(
        floatX* __restrict__ out, const floatX* __restrict__ y, int B, int T, int NH, int HS) {
    const int idx = (blockIdx.x * blockDim.x + threadIdx.x) * x128::size;
    if (idx >= B * NH * T * HS) { return; }
    const int d = idx % HS;
    const int t = (idx / HS) % T;
    const int h = (idx / (HS * T)) % NH;
    const int b = idx / (HS * T * NH);
    const int dst = ((b * T + t) * NH + h) * HS + d;
    store128(out + dst, load128cs(y + idx));
}

// dy (B,NH,T,HS) <- dout (B,T,NH,HS): the inverse of unpermute_kernel, same launch.
extern "C" __global__ void __launch_bounds__(PERMUTE_BLOCK) unpermute_backward_kernel(
        floatX* __restrict__ dy, const floatX* __restrict__ dout, int B, int T, int NH, int HS) {
    const int idx = (blockIdx.x * blockDim.x + threadIdx.x) * x128::size;
    if (idx >= B * NH * T * HS) { return; }
    const int d = idx % HS;
    const int t = (idx / HS) % T;
    const int h = (idx / (HS * T)) % NH;
    const int b = idx / (HS * T * NH);
    const int src = ((b * T + t) * NH + h) * HS + d;
    store128(dy + idx, load128cs(dout + src));
}

// att (B*NH,T,T) = causal softmax of scale * preatt (B*NH,T,T), row-wise; att may be preatt (in place).
// att[i,j] = exp(scale*(x_ij - max_i)) / sum_i for j <= i, exact 0 for j > i; max and sum online in f32.
// One warp per row: grid ceil(B*NH*T / 8), block SOFTMAX_BLOCK. Rows are taken from the last one backwards, so
// the longest rows (i near T-1) start first and the short ones fill the tail. Fast: one read pass for max and
// sum together (online rescaling), one read+write pass for the output, lanes on consecutive columns (coalesced).
extern "C" __global__ void __launch_bounds__(SOFTMAX_BLOCK) softmax_forward_kernel(
        floatX* att, const floatX* preatt, int BNH, int T, float scale) {
    const int warp_global = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    const int lane = threadIdx.x % WARP_SIZE;
    const int num_rows = BNH * T;
    if (warp_global >= num_rows) { return; }
    const int row = num_rows - 1 - warp_global;
    const int i = row % T;  // query position: columns 0..i are visible
    const floatX* x = preatt + (size_t)row * T;
    floatX* y = att + (size_t)row * T;

    float maxval = -LLMC_INF;
    float sumval = 0.0f;
    for (int j = lane; j <= i; j += WARP_SIZE) {
        const float xj = to_float(x[j]);
        const float new_max = fmaxf(maxval, xj);
        sumval = sumval * expf(scale * (maxval - new_max)) + expf(scale * (xj - new_max));
        maxval = new_max;
    }
    const float row_max = warp_reduce_max(maxval);
    sumval = (maxval == -LLMC_INF) ? 0.0f : sumval * expf(scale * (maxval - row_max));  // lanes with no column
    const float inv_sum = 1.0f / warp_reduce_sum(sumval);
    for (int j = lane; j < T; j += WARP_SIZE) {
        const float p = (j <= i) ? expf(scale * (to_float(x[j]) - row_max)) * inv_sum : 0.0f;
        y[j] = to_floatX(p);
    }
}

// dpreatt (B*NH,T,T) = scale * att * (datt - sum_k att_ik * datt_ik) for j <= i, exact 0 for j > i.
// dpreatt may be datt (in place, as llm.c runs it). One warp per row, launch as softmax_forward_kernel.
// Fast: the row dot product and the output are two coalesced passes over the visible columns only.
extern "C" __global__ void __launch_bounds__(SOFTMAX_BLOCK) softmax_backward_kernel(
        floatX* dpreatt, const floatX* datt, const floatX* att, int BNH, int T, float scale) {
    const int warp_global = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    const int lane = threadIdx.x % WARP_SIZE;
    const int num_rows = BNH * T;
    if (warp_global >= num_rows) { return; }
    const int row = num_rows - 1 - warp_global;
    const int i = row % T;
    const size_t base = (size_t)row * T;

    float dot = 0.0f;
    for (int j = lane; j <= i; j += WARP_SIZE) { dot += to_float(att[base + j]) * to_float(datt[base + j]); }
    dot = warp_reduce_sum(dot);
    for (int j = lane; j < T; j += WARP_SIZE) {
        float g = 0.0f;
        if (j <= i) {
            const float a = to_float(att[base + j]);
            g = scale * a * (to_float(datt[base + j]) - dot);
        }
        dpreatt[base + j] = to_floatX(g);
    }
}
