// LayerNorm over C (eps 1e-5, population variance), the fused residual-add + LayerNorm, and the backward.
//
// Design decision: activations are overwritten (=), gradients accumulate (+=), and dinp too, because the
// LayerNorm input is the residual stream whose gradient also receives the skip connection. dweight and dbias
// are summed without atomics on values: every block writes f32 partial sums for its own contiguous range of
// rows into a scratch buffer, and a second small kernel adds the partials in block order and rounds once into
// the floatX grads, so the result is bit-reproducible for a given grid. mean and rstd are f32, saved by the
// forward for the backward; the fused op normalizes the residual as rounded to floatX, as it is stored.

#include "common.cuh"

#define LN_EPS 1e-5f
#define LN_BWD_BLOCK 512    // layernorm_backward_kernel: 16 warps, 16 rows per tile
#define LN_REDUCE_BLOCK 256

// ----------------------------------------------------------------------------
// kernels

// Row statistics and output of one row held in the warp's shared-memory slot `s_row` (C floatX). One warp per row.
__device__ __forceinline__ void layernorm_row(floatX* __restrict__ out_row, float* __restrict__ mean,
                                              float* __restrict__ rstd, const x128* s_row,
                                              const floatX* __restrict__ weight, const floatX* __restrict__ bias,
                                              int row, int C, int lane) {
    float sum = 0.0f;
    for (int c = lane * x128::size; c < C; c += WARP_SIZE * x128::size) {
        const x128 x = s_row[c / x128::size];
        for (int k = 0; k < x128::size; k++) { sum += x.get(k); }
    }
    const float m = warp_reduce_sum(sum) / C;
    float var = 0.0f;
    for (int c = lane * x128::size; c < C; c += WARP_SIZE * x128::size) {
        const x128 x = s_row[c / x128::size];
        for (int k = 0; k < x128::size; k++) {
            const float d = x.get(k) - m;
            var += d * d;
        }
    }
    const float s = rsqrtf(warp_reduce_sum(var) / C + LN_EPS);
    for (int c = lane * x128::size; c < C; c += WARP_SIZE * x128::size) {
        const x128 x = s_row[c / x128::size];
        const x128 w = load128(weight + c);
        const x128 b = load128(bias + c);
        x128 o;
        for (int k = 0; k < x128::size; k++) { o.set(k, s * (x.get(k) - m) * w.get(k) + b.get(k)); }
        store128(out_row + c, o);
    }
    if (lane == 0) {
        if (mean != nullptr) { __stcs(mean + row, m); }
        if (rstd != nullptr) { __stcs(rstd + row, s); }
    }
}

// out (N,C) = layernorm(inp (N,C)) * weight (C) + bias (C); mean, rstd (N) f32 (either may be null).
// One warp per row: block (32*W), grid ceil(N/W), dynamic shared memory W*C*sizeof(floatX); C % x128::size == 0.
// Fast: the row is read from global memory once (128-bit, streaming) into shared memory and the mean, variance
// and output passes run from there; warp shuffles only, no __syncthreads.
extern "C" __global__ void layernorm_forward_kernel(
        floatX* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
        const floatX* __restrict__ inp, const floatX* __restrict__ weight, const floatX* __restrict__ bias,
        int N, int C) {
    extern __shared__ __align__(16) unsigned char ln_smem[];
    const int warp = threadIdx.x / WARP_SIZE;
    const int lane = threadIdx.x % WARP_SIZE;
    const int row = blockIdx.x * (blockDim.x / WARP_SIZE) + warp;
    if (row >= N) { return; }
    x128* s_row = reinterpret_cast<x128*>(ln_smem) + (size_t)warp * (C / x128::size);
    const floatX* x = inp + (size_t)row * C;
    for (int c = lane * x128::size; c < C; c += WARP_SIZE * x128::size) {
        s_row[c / x128::size] = load128cs(x + c);
    }
    layernorm_row(out + (size_t)row * C, mean, rstd, s_row, weight, bias, row, C, lane);
}

// residual (N,C) = floatX(inp1 + inp2); normed (N,C) = layernorm(residual) * weight + bias; mean, rstd (N) f32.
// Same launch as layernorm_forward_kernel. The statistics use the rounded residual, i.e. exactly what is stored.
extern "C" __global__ void fused_residual_forward_kernel(
        floatX* __restrict__ residual, floatX* __restrict__ normed, float* __restrict__ mean,
        float* __restrict__ rstd, const floatX* __restrict__ inp1, const floatX* __restrict__ inp2,
        const floatX* __restrict__ weight, const floatX* __restrict__ bias, int N, int C) {
    extern __shared__ __align__(16) unsigned char ln_smem[];
    const int warp = threadIdx.x / WARP_SIZE;
    const int lane = threadIdx.x % WARP_SIZE;
    const int row = blockIdx.x * (blockDim.x / WARP_SIZE) + warp;
    if (row >= N) { return; }
    x128* s_row = reinterpret_cast<x128*>(ln_smem) + (size_t)warp * (C / x128::size);
    const size_t base = (size_t)row * C;
    for (int c = lane * x128::size; c < C; c += WARP_SIZE * x128::size) {
        const x128 a = load128cs(inp1 + base + c);
        const x128 b = load128cs(inp2 + base + c);
        x128 r;
        for (int k = 0; k < x128::size; k++) { r.set(k, a.get(k) + b.get(k)); }
        store128(residual + base + c, r);
        s_row[c / x128::size] = r;
    }
    layernorm_row(normed + base, mean, rstd, s_row, weight, bias, row, C, lane);
}

// Backward, part 1. dinp (N,C) += dx; scratch (gridDim.x, 2, C) f32 = this block's [dbias, dweight] partial sums.
// With xhat = (x - mean) * rstd and dnorm = weight * dout: dx = (dnorm - mean_C(dnorm) - xhat * mean_C(dnorm*xhat))
// * rstd, where mean_C(dnorm*xhat) comes from raw x corrected by mean and rstd, as llm.c does.
// Launch: block LN_BWD_BLOCK (16 warps), any grid G (e.g. 2 * number of SMs), dynamic shared memory
// 2 * R * C * 4 bytes with R = max(1, LN_BWD_BLOCK / (C / x128::size)); C % x128::size == 0, C <= 6144.
// Block g owns the rows [g*ceil(N/G), (g+1)*ceil(N/G)) and walks them in tiles of 16 rows: each warp computes
// dx of one row (warp shuffles only), then thread (r, j) adds rows r, r+R, ... of the tile into its own f32
// accumulators for channels j*x128::size + [0, x128::size) in shared memory (one owner per slot: no atomics, fixed
// order). At the end the R accumulators of each channel are added in order r = 0..R-1 and stored to scratch.
// Fast: the tile's rows were just read by the warps' dx pass, so the column pass hits L1/L2; 128-bit loads.
extern "C" __global__ void __launch_bounds__(LN_BWD_BLOCK) layernorm_backward_kernel(
        floatX* __restrict__ dinp, float* __restrict__ scratch, const floatX* __restrict__ dout,
        const floatX* __restrict__ inp, const floatX* __restrict__ weight, const float* __restrict__ mean,
        const float* __restrict__ rstd, int N, int C) {
    extern __shared__ __align__(16) unsigned char ln_smem[];
    const int num_warps = blockDim.x / WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int lane = threadIdx.x % WARP_SIZE;
    const int num_chunks = C / x128::size;
    const int R = max(1, (int)blockDim.x / num_chunks);  // row groups in the column pass
    float* acc_dbias = reinterpret_cast<float*>(ln_smem);  // (R, C)
    float* acc_dweight = acc_dbias + (size_t)R * C;         // (R, C)
    for (int i = threadIdx.x; i < 2 * R * C; i += blockDim.x) { acc_dbias[i] = 0.0f; }
    __syncthreads();

    const int rows_per_block = CEIL_DIV(N, (int)gridDim.x);
    const int row_begin = blockIdx.x * rows_per_block;
    const int row_end = min(N, row_begin + rows_per_block);
    for (int tile = row_begin; tile < row_end; tile += num_warps) {
        const int tile_rows = min(num_warps, row_end - tile);
        // dx: one warp per row of the tile
        if (warp < tile_rows) {
            const int row = tile + warp;
            const size_t base = (size_t)row * C;
            const float m = mean[row];
            const float s = rstd[row];
            float dnorm_sum = 0.0f;
            float dnorm_x_sum = 0.0f;
            for (int c = lane * x128::size; c < C; c += WARP_SIZE * x128::size) {
                const x128 d = load128(dout + base + c);
                const x128 x = load128(inp + base + c);
                const x128 w = load128(weight + c);
                for (int k = 0; k < x128::size; k++) {
                    const float dnorm = w.get(k) * d.get(k);
                    dnorm_sum += dnorm;
                    dnorm_x_sum += dnorm * x.get(k);
                }
            }
            const float dnorm_mean = warp_reduce_sum(dnorm_sum) / C;
            const float dnorm_xhat_mean = warp_reduce_sum(dnorm_x_sum) / C * s - dnorm_mean * m * s;
            for (int c = lane * x128::size; c < C; c += WARP_SIZE * x128::size) {
                const x128 d = load128(dout + base + c);
                const x128 x = load128(inp + base + c);
                const x128 w = load128(weight + c);
                x128 g = load128(dinp + base + c);
                for (int k = 0; k < x128::size; k++) {
                    const float xhat = (x.get(k) - m) * s;
                    const float dx = (w.get(k) * d.get(k) - dnorm_mean - xhat * dnorm_xhat_mean) * s;
                    g.set(k, g.get(k) + dx);
                }
                store128(dinp + base + c, g);
            }
        }
        // dbias, dweight: thread (r, j) owns channels j*x128::size.. in accumulator row r
        for (int a = threadIdx.x; a < R * num_chunks; a += blockDim.x) {
            const int r = a / num_chunks;
            const int c = (a % num_chunks) * x128::size;
            float db[x128::size], dw[x128::size];
            for (int k = 0; k < x128::size; k++) { db[k] = 0.0f; dw[k] = 0.0f; }
            for (int i = r; i < tile_rows; i += R) {
                const int row = tile + i;
                const size_t base = (size_t)row * C;
                const float m = mean[row];
                const float s = rstd[row];
                const x128 d = load128(dout + base + c);
                const x128 x = load128(inp + base + c);
                for (int k = 0; k < x128::size; k++) {
                    db[k] += d.get(k);
                    dw[k] += (x.get(k) - m) * s * d.get(k);
                }
            }
            for (int k = 0; k < x128::size; k++) {
                acc_dbias[(size_t)r * C + c + k] += db[k];
                acc_dweight[(size_t)r * C + c + k] += dw[k];
            }
        }
    }
    __syncthreads();
    float* out = scratch + (size_t)blockIdx.x * 2 * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float db = 0.0f, dw = 0.0f;
        for (int r = 0; r < R; r++) {
            db += acc_dbias[(size_t)r * C + c];
            dw += acc_dweight[(size_t)r * C + c];
        }
        out[c] = db;
        out[C + c] = dw;
    }
}

// Backward, part 2. dbias (C) += sum over blocks of scratch[:, 0, :]; dweight (C) += sum of scratch[:, 1, :].
// One thread per channel: grid ceil(C / LN_REDUCE_BLOCK), block LN_REDUCE_BLOCK; num_blocks = part 1's grid.
// Blocks are added in index order in f32, then one round-to-nearest into floatX: deterministic.
extern "C" __global__ void __launch_bounds__(LN_REDUCE_BLOCK) layernorm_backward_reduce_kernel(
        floatX* __restrict__ dweight, floatX* __restrict__ dbias, const float* __restrict__ scratch,
        int num_blocks, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) { return; }
    float db = 0.0f, dw = 0.0f;
    for (int g = 0; g < num_blocks; g++) {
        db += scratch[(size_t)g * 2 * C + c];
        dw += scratch[(size_t)g * 2 * C + C + c];
    }
    dbias[c] = to_floatX(to_float(dbias[c]) + db);
    dweight[c] = to_floatX(to_float(dweight[c]) + dw);
}
