// Encoder: out (B,T,C) = wte[inp] + wpe[t]; backward into dwte (Vp,C) and dwpe (maxT,C).
//
// Design decision: the backward is deterministic without atomics on values. dwpe: one thread owns 16 bytes of
// one position's channels and sums over b itself. dwte: the host groups the (b,t) positions by token into
// buckets (layout below), so one block owns one (token, channel group) and is the only writer of that slice of
// dwte; both sum in f32 and round into the floatX grad once (stochastically in bf16, spec 7.3).
// The launch does not depend on the batch: the bucket table has a fixed number of rows and the rounding seed
// is read from device memory, so a backward captured once as a CUDA graph replays for every batch.
//
// wte backward input layout, written on the host from the token ids before the launch (llmc_py/encoder.py):
//   bucket_info  int32 (rows, 4), 16-byte aligned, rows = min(B*T, Vp), the most distinct tokens a batch can
//                hold; row i = [start, size, token, 0]: one bucket per distinct token in inp, sorted by size
//                descending, ties by token ascending (fully determined, so the rounding noise below is
//                reproducible, unlike llm.c's unordered_map order, spec 7.3 AMBIG); the rows past the batch's
//                buckets are all zero (size 0: their blocks return at once).
//   workload     int32 (B*T,): the flat positions bt = b*T + t, grouped by bucket: bucket i owns
//                workload[start : start+size], in increasing bt (the NumPy oracle's stable argsort of the ids).
//   launch       grid (rows, num_c_groups), block WTE_BLOCK = 256, num_c_groups = ceil(C / (32*x128::size)).
// In NumPy: order = argsort(ids, stable); uniq, start, size = unique(ids[order], index, counts);
// by = lexsort((uniq, -size)); bucket_info = [start[by], size[by], uniq[by], 0]; workload = order.
// llm.c lists every (token, channel group) pair as its own bucket; the lists of one token are identical for every
// group, so here a bucket is a token and the group is blockIdx.y: num_c_groups times smaller tables, same blocks.
// Rounding noise: position (threadIdx.x, bucket*256 + group), seed + bucket*32 + lane + k.

#include "common.cuh"

#define ENC_BLOCK 256  // encoder forward and wpe backward (the wpe rounding noise depends on it)
#define WTE_BLOCK 256  // wte backward: 8 warps share one bucket

// ----------------------------------------------------------------------------
// kernels

// out (B,T,C), inp int32 (B,T), wte (Vp,C), wpe (maxT,C). One thread per 16-byte chunk of out:
// grid ceil(B*T*C / (ENC_BLOCK*x128::size)), block ENC_BLOCK. C % x128::size == 0. Fast: 128-bit loads and stores
// only, consecutive threads touch consecutive chunks of one row, so every access is fully coalesced.
extern "C" __global__ void __launch_bounds__(ENC_BLOCK) encoder_forward_kernel(
        floatX* __restrict__ out, const int* __restrict__ inp, const floatX* __restrict__ wte,
        const floatX* __restrict__ wpe, int B, int T, int C) {
    const int idx = (blockIdx.x * blockDim.x + threadIdx.x) * x128::size;  // B*T*C < 2^31
    if (idx >= B * T * C) { return; }
    const int bt = idx / C;
    const int c = idx % C;
    const int t = bt % T;
    const int token = inp[bt];
    const x128 w = load128cs(wte + (size_t)token * C + c);
    const x128 p = load128cs(wpe + (size_t)t * C + c);
    x128 o;
    for (int k = 0; k < x128::size; k++) { o.set(k, w.get(k) + p.get(k)); }
    store128(out + idx, o);
}

// dwpe (maxT,C) [:T] += dout (B,T,C) summed over b. One thread per 16-byte chunk of dwpe[:T]:
// grid ceil(T*C / (ENC_BLOCK*x128::size)), block ENC_BLOCK. f32 sum in b order, one stochastic rounding with
// seed[0] + element index + k (spec 7.3). Fast: B coalesced 128-bit loads per thread, no cross-thread traffic.
extern "C" __global__ void __launch_bounds__(ENC_BLOCK) wpe_backward_kernel(
        floatX* __restrict__ dwpe, const floatX* __restrict__ dout, int B, int T, int C,
        const unsigned int* __restrict__ seed) {
    const int idx = (blockIdx.x * blockDim.x + threadIdx.x) * x128::size;
    if (idx >= T * C) { return; }
    const unsigned int s = seed[0];
    float acc[x128::size];
    for (int k = 0; k < x128::size; k++) { acc[k] = 0.0f; }
    for (int b = 0; b < B; b++) {
        const x128 d = load128(dout + (size_t)b * T * C + idx);  // dout is read again by wte_backward_kernel
        for (int k = 0; k < x128::size; k++) { acc[k] += d.get(k); }
    }
    x128 g = load128(dwpe + idx);
    for (int k = 0; k < x128::size; k++) {
        stochastic_rounding(acc[k] + g.get(k), &g[k], s + (unsigned int)idx + k);
    }
    store128(dwpe + idx, g);
}

// dwte (Vp,C) [token] += sum of dout (B,T,C) over the token's positions, from the host buckets described at the
// top. Block (bucket, channel group): lane l of every warp owns channels c = (group*32 + l)*x128::size + [0, size);
// warp w sums items w, w+8, ... of the bucket in f32, warp 0 adds the other warps' sums in warp order and
// rounds once into dwte with seed[0] + bucket*32 + lane + k. Fast: 8 warps stream a bucket's rows in parallel
// with 128-bit coalesced loads; buckets are sorted large first so the longest blocks start first, and the empty
// rows at the end cost one 16-byte load per block.
extern "C" __global__ void __launch_bounds__(WTE_BLOCK) wte_backward_kernel(
        floatX* __restrict__ dwte, const int4* __restrict__ bucket_info, const int* __restrict__ workload,
        const floatX* __restrict__ dout, int C, const unsigned int* __restrict__ seed) {
    __shared__ float partial[x128::size * WTE_BLOCK];  // [k][thread]: conflict-free for fixed k
    const int bucket = blockIdx.x;
    const int warp = threadIdx.x / WARP_SIZE;
    const int lane = threadIdx.x % WARP_SIZE;
    const int4 info = bucket_info[bucket];  // start, size, token, unused
    if (info.y == 0) { return; }  // past the batch's buckets: the whole block leaves before any barrier
    const int c = (blockIdx.y * WARP_SIZE + lane) * x128::size;
    const bool active = c < C;  // C need not fill the last channel group

    float acc[x128::size];
    for (int k = 0; k < x128::size; k++) { acc[k] = 0.0f; }
    if (active) {
        for (int item = warp; item < info.y; item += WTE_BLOCK / WARP_SIZE) {
            const int bt = workload[info.x + item];
            const x128 d = load128cs(dout + (size_t)bt * C + c);
            for (int k = 0; k < x128::size; k++) { acc[k] += d.get(k); }
        }
    }
    for (int k = 0; k < x128::size; k++) { partial[k * WTE_BLOCK + threadIdx.x] = acc[k]; }
    __syncthreads();
    if (warp != 0 || !active) { return; }
    for (int w = 1; w < WTE_BLOCK / WARP_SIZE; w++) {
        for (int k = 0; k < x128::size; k++) { acc[k] += partial[k * WTE_BLOCK + w * WARP_SIZE + lane]; }
    }
    floatX* dst = dwte + (size_t)info.z * C + c;
    x128 g = load128(dst);
    const unsigned int s = seed[0] + (unsigned int)bucket * WARP_SIZE + lane;
    for (int k = 0; k < x128::size; k++) {
        stochastic_rounding(acc[k] + g.get(k), &g[k], s + k);
    }
    store128(dst, g);
}
