// Matmul helpers next to cuBLAS: the bias gradient, the bias add of the fp32 SGEMM path, and a tiled SGEMM for
// the forward out = inp @ W^T + bias (--matmul custom).
//
// Design decision: dbias += column sums of dout is summed without atomics on values, in two kernels: blocks
// write f32 partial column sums for their own rows into a scratch buffer, then one thread per column adds the
// partials in block order and rounds once into floatX. It always accumulates (+=), including the single-row-of-
// blocks case where llm.c overwrites (spec 10.1 QUIRK). The SGEMM is the fp32 fallback for forward matmuls that
// needs no cuBLAS handle (nn.Linear layout, f32 accumulation, one rounding to floatX), checked against the oracle.

#include "common.cuh"

#define BIAS_BLOCK 256         // 8 warps per block in the bias-gradient kernel
#define BIAS_REDUCE_BLOCK 256
#define BIAS_ADD_BLOCK 256
#define GEMM_BM 128            // output rows per block
#define GEMM_BN 128            // output columns per block
#define GEMM_BK 16             // reduction slice held in shared memory
#define GEMM_THREADS 256       // 16 x 16 threads, 8 x 8 outputs each

// ----------------------------------------------------------------------------
// kernels

// Bias gradient, part 1: partials (gridDim.y, OC) f32 = column sums of this block row's rows of dout (N, OC).
// Grid (ceil(OC / (32*x128::size)), G_y), block BIAS_BLOCK; OC % x128::size == 0. Block (sx, sy): lane l owns
// the 16 bytes of columns c = (sx*32 + l)*x128::size + [0, size); warp w sums rows sy*8 + w, then every
// 8*G_y rows on, in f32; warp 0 adds the other warps' sums in warp order. Fast: every warp reads 512 contiguous
// bytes of a row per step (coalesced 128-bit loads), G_y is chosen to fill the GPU (e.g. 4 * SMs / sx blocks).
extern "C" __global__ void __launch_bounds__(BIAS_BLOCK) matmul_backward_bias_kernel(
        float* __restrict__ partials, const floatX* __restrict__ dout, int N, int OC) {
    __shared__ float partial[x128::size * BIAS_BLOCK];  // [k][thread]
    const int warp = threadIdx.x / WARP_SIZE;
    const int lane = threadIdx.x % WARP_SIZE;
    const int num_warps = BIAS_BLOCK / WARP_SIZE;
    const int c = (blockIdx.x * WARP_SIZE + lane) * x128::size;
    const bool active = c < OC;
    float acc[x128::size];
    for (int k = 0; k < x128::size; k++) { acc[k] = 0.0f; }
    if (active) {
        for (int row = blockIdx.y * num_warps + warp; row < N; row += gridDim.y * num_warps) {
            const x128 d = load128(dout + (size_t)row * OC + c);  // dout is read again by the dinp/dweight GEMMs
            for (int k = 0; k < x128::size; k++) { acc[k] += d.get(k); }
        }
    }
    for (int k = 0; k < x128::size; k++) { partial[k * BIAS_BLOCK + threadIdx.x] = acc[k]; }
    __syncthreads();
    if (warp != 0 || !active) { return; }
    for (int w = 1; w < num_warps; w++) {
        for (int k = 0; k < x128::size; k++) { acc[k] += partial[k * BIAS_BLOCK + w * WARP_SIZE + lane]; }
    }
    float* dst = partials + (size_t)blockIdx.y * OC + c;
    for (int k = 0; k < x128::size; k += f128::size) {
        f128 out;
        for (int i = 0; i < f128::size; i++) { out[i] = acc[k + i]; }
        store128(dst + k, out);
    }
}

// Bias gradient, part 2: dbias (OC) += sum over sy of partials[sy, :], added in sy order, one rounding.
// One thread per column: grid ceil(OC / BIAS_REDUCE_BLOCK), block BIAS_REDUCE_BLOCK; num_rows = part 1's G_y.
extern "C" __global__ void __launch_bounds__(BIAS_REDUCE_BLOCK) matmul_backward_bias_reduce_kernel(
        floatX* __restrict__ dbias, const float* __restrict__ partials, int num_rows, int OC) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= OC) { return; }
    float sum = 0.0f;
    for (int r = 0; r < num_rows; r++) { sum += partials[(size_t)r * OC + c]; }
    dbias[c] = to_floatX(to_float(dbias[c]) + sum);
}

// out (N, OC) += bias (OC), in place: the bias of the fp32 cuBLAS path, whose SGEMM has no epilogue (cuBLASLt adds
// it in the bf16 path). One thread per 16-byte chunk of out: grid ceil(N*OC / (BIAS_ADD_BLOCK*x128::size)), block
// BIAS_ADD_BLOCK; OC % x128::size == 0. Fast: 128-bit loads and stores; the bias chunks stay in L1 across rows.
extern "C" __global__ void __launch_bounds__(BIAS_ADD_BLOCK) add_bias_kernel(
        floatX* __restrict__ out, const floatX* __restrict__ bias, int N, int OC) {
    const size_t idx = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * x128::size;
    if (idx >= (size_t)N * OC) { return; }
    const int c = (int)(idx % (size_t)OC);
    x128 o = load128(out + idx);
    const x128 b = load128(bias + c);
    for (int k = 0; k < x128::size; k++) { o.set(k, o.get(k) + b.get(k)); }
    store128(out + idx, o);
}

// Loads 8 consecutive elements src[0..8) (when k0 + 8 <= K and `vec`, two or one 128-bit loads) as floats;
// elements past K, or a row past the matrix (src == nullptr), read as 0.
__device__ __forceinline__ void gemm_load8(float* dst, const floatX* src, int k0, int K, bool vec) {
    if (src != nullptr && vec && k0 + 8 <= K) {
        for (int i = 0; i < 8; i += x128::size) {
            const x128 p = load128(src + i);
            for (int j = 0; j < x128::size; j++) { dst[i + j] = p.get(j); }
        }
    } else {
        for (int i = 0; i < 8; i++) { dst[i] = (src != nullptr && k0 + i < K) ? to_float(src[i]) : 0.0f; }
    }
}

// out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC) [bias may be null], f32 accumulation, one rounding.
// Grid (ceil(OC / 128), ceil(N / 128)), block GEMM_THREADS; any N, C, OC (the 128-bit path needs C % 8 == 0).
// Each block computes a 128 x 128 tile of out: per 16-wide slice of C, every thread loads 8 elements of one row
// of inp and of weight into shared memory (stored k-major, so the inner loop reads 4-float vectors), then thread
// (ty, tx) accumulates rows {ty*4+i, 64+ty*4+i} x columns {tx*4+j, 64+tx*4+j} in 64 registers.
// Fast: each shared value feeds 8 FMAs from registers (64 FMAs per 4 vector loads), the split 4+4 row/column
// blocks make every warp's shared reads conflict-free, and global loads are 128-bit when C allows.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS) matmul_forward_kernel(
        floatX* __restrict__ out, const floatX* __restrict__ inp, const floatX* __restrict__ weight,
        const floatX* __restrict__ bias, int N, int C, int OC) {
    __shared__ __align__(16) float As[GEMM_BK][GEMM_BM];
    __shared__ __align__(16) float Bs[GEMM_BK][GEMM_BN];
    const int tid = threadIdx.x;
    const int tx = tid % 16;
    const int ty = tid / 16;
    const int row0 = blockIdx.y * GEMM_BM;
    const int col0 = blockIdx.x * GEMM_BN;
    const bool vec = (C % 8) == 0;
    // loader mapping: thread t loads 8 consecutive k of tile row t % 128, half (t / 128) of the 16-wide slice
    const int load_row = tid % GEMM_BM;
    const int load_k = (tid / GEMM_BM) * 8;
    const floatX* a_src = (row0 + load_row < N) ? inp + (size_t)(row0 + load_row) * C : nullptr;
    const floatX* b_src = (col0 + load_row < OC) ? weight + (size_t)(col0 + load_row) * C : nullptr;

    float acc[8][8];
    for (int i = 0; i < 8; i++) {
        for (int j = 0; j < 8; j++) { acc[i][j] = 0.0f; }
    }
    for (int k0 = 0; k0 < C; k0 += GEMM_BK) {
        float a[8], b[8];
        gemm_load8(a, a_src ? a_src + k0 + load_k : nullptr, k0 + load_k, C, vec);
        gemm_load8(b, b_src ? b_src + k0 + load_k : nullptr, k0 + load_k, C, vec);
        for (int i = 0; i < 8; i++) {
            As[load_k + i][load_row] = a[i];
            Bs[load_k + i][load_row] = b[i];
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < GEMM_BK; kk++) {
            const float4 a0 = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
            const float4 a1 = *reinterpret_cast<const float4*>(&As[kk][64 + ty * 4]);
            const float4 b0 = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
            const float4 b1 = *reinterpret_cast<const float4*>(&Bs[kk][64 + tx * 4]);
            const float ar[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const float br[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int i = 0; i < 8; i++) {
#pragma unroll
                for (int j = 0; j < 8; j++) { acc[i][j] = fmaf(ar[i], br[j], acc[i][j]); }
            }
        }
        __syncthreads();
    }
    for (int i = 0; i < 8; i++) {
        const int row = row0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4));
        if (row >= N) { continue; }
        for (int j = 0; j < 8; j++) {
            const int col = col0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + (j - 4));
            if (col >= OC) { continue; }
            const float bias_c = (bias != nullptr) ? to_float(bias[col]) : 0.0f;
            out[(size_t)row * OC + col] = to_floatX(acc[i][j] + bias_c);
        }
    }
}
