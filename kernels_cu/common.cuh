// Shared device code for every kernels_cu/*.cu: floatX, 128-bit packed loads/stores, warp and block reductions,
// and stochastic rounding.
//
// Design decision: one source serves every precision. floatX comes from a -D define chosen by llmc_py/cuda.py
// (-DENABLE_BF16 -> __nv_bfloat16, -DENABLE_FP32 -> float), and every conversion goes through to_float /
// from_float so the kernels never depend on implicit bf16 conversion operators. All arithmetic is f32.
// Compiled by NVRTC: no libc headers; only <cuda_bf16.h> in bf16 builds (llmc_py/cuda.py adds its folder).
#pragma once

#if defined(ENABLE_BF16)
#include <cuda_bf16.h>
typedef __nv_bfloat16 floatX;
#define LLMC_PRECISION_BF16 1
#elif defined(ENABLE_FP32)
typedef float floatX;
#define LLMC_PRECISION_BF16 0
#else
#error "compile with -DENABLE_BF16 or -DENABLE_FP32"
#endif

#define WARP_SIZE 32
#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))
// NVRTC has no <math.h>: infinities by bit pattern
#define LLMC_INF __int_as_float(0x7f800000)

// ----------------------------------------------------------------------------
// scalar conversions (round to nearest even into floatX)

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ void from_float(float x, float* out) { *out = x; }
#if LLMC_PRECISION_BF16
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void from_float(float x, __nv_bfloat16* out) { *out = __float2bfloat16_rn(x); }
#endif
__device__ __forceinline__ floatX to_floatX(float x) { floatX r; from_float(x, &r); return r; }

// ----------------------------------------------------------------------------
// Packed128: 16 bytes of elements, moved with one LDG.128 / STG.128. Addresses must be 16-byte aligned, which
// holds when the buffer starts 16-byte aligned (CuPy allocations are 256-aligned) and the element offset is a
// multiple of Packed128<T>::size: the launchers check the channel counts for that.

template <class T>
struct alignas(16) Packed128 {
    static constexpr int size = 16 / sizeof(T);
    T payload[size];
    __device__ __forceinline__ T& operator[](int i) { return payload[i]; }
    __device__ __forceinline__ const T& operator[](int i) const { return payload[i]; }
    __device__ __forceinline__ float get(int i) const { return to_float(payload[i]); }
    __device__ __forceinline__ void set(int i, float x) { from_float(x, &payload[i]); }
    __device__ static __forceinline__ Packed128 zeros() {
        Packed128 r;
        *reinterpret_cast<int4*>(&r) = make_int4(0, 0, 0, 0);
        return r;
    }
};

typedef Packed128<floatX> x128;
typedef Packed128<float> f128;

template <class T>
__device__ __forceinline__ Packed128<T> load128(const T* address) {
    Packed128<T> r;
    *reinterpret_cast<int4*>(&r) = *reinterpret_cast<const int4*>(address);
    return r;
}
// streaming load: data read once, do not keep it in cache
template <class T>
__device__ __forceinline__ Packed128<T> load128cs(const T* address) {
    Packed128<T> r;
    *reinterpret_cast<int4*>(&r) = __ldcs(reinterpret_cast<const int4*>(address));
    return r;
}
template <class T>
__device__ __forceinline__ void store128(T* address, const Packed128<T>& value) {
    *reinterpret_cast<int4*>(address) = *reinterpret_cast<const int4*>(&value);
}
// streaming store: written once, not read again soon
template <class T>
__device__ __forceinline__ void store128cs(T* address, const Packed128<T>& value) {
    __stcs(reinterpret_cast<int4*>(address), *reinterpret_cast<const int4*>(&value));
}
// cached in L2 only (bypasses L1): for data another block reads next
template <class T>
__device__ __forceinline__ void store128cg(T* address, const Packed128<T>& value) {
    __stcg(reinterpret_cast<int4*>(address), *reinterpret_cast<const int4*>(&value));
}

// ----------------------------------------------------------------------------
// reductions: fixed butterfly trees, so results are deterministic for a given launch geometry

__device__ __forceinline__ float warp_reduce_sum(float val) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        val += __shfl_xor_sync(0xFFFFFFFFu, val, offset);
    }
    return val;
}

__device__ __forceinline__ float warp_reduce_max(float val) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        val = fmaxf(val, __shfl_xor_sync(0xFFFFFFFFu, val, offset));
    }
    return val;
}

// Block-wide sum or max for 1-D blocks whose size is a multiple of 32 (at most 1024); every thread gets the result.
// `scratch` is 32 floats of shared memory owned by the caller; the trailing __syncthreads lets the caller reuse it
// (or call again) right away.
__device__ __forceinline__ float block_reduce_sum(float val, float* scratch) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int num_warps = blockDim.x / WARP_SIZE;
    val = warp_reduce_sum(val);
    if (lane == 0) { scratch[warp] = val; }
    __syncthreads();
    val = (lane < num_warps) ? scratch[lane] : 0.0f;
    val = warp_reduce_sum(val);
    __syncthreads();
    return val;
}

__device__ __forceinline__ float block_reduce_max(float val, float* scratch) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int num_warps = blockDim.x / WARP_SIZE;
    val = warp_reduce_max(val);
    if (lane == 0) { scratch[warp] = val; }
    __syncthreads();
    val = (lane < num_warps) ? scratch[lane] : -LLMC_INF;
    val = warp_reduce_max(val);
    __syncthreads();
    return val;
}

// ----------------------------------------------------------------------------
// Stochastic rounding f32 -> bf16 (spec 7.3). The noise is SquirrelNoise5 of the thread's 2-D position
// (ix = threadIdx.x, iy = blockIdx.x * blockDim.x + blockIdx.y) and a seed, so a kernel's rounding is fixed by
// its launch geometry and seed: AdamW and init-from-master must keep block 512 for bit-exact parameters.

__host__ __device__ __forceinline__ unsigned int squirrel_noise5(unsigned int position, unsigned int seed) {
    unsigned int m = position * 0xd2a80a3fu;
    m += seed;
    m ^= m >> 9;
    m += 0xa884f197u;
    m ^= m >> 11;
    m *= 0x6C736F4Bu;
    m ^= m >> 13;
    m += 0xB79F3ABBu;
    m ^= m >> 15;
    m *= 0x1b56c4f5u;
    m ^= m >> 17;
    return m;
}

__host__ __device__ __forceinline__ unsigned int noise_2d(unsigned int ix, unsigned int iy, unsigned int seed) {
    return squirrel_noise5(ix + 198491317u * iy, seed);
}

// in FP32 builds the "rounding" is a plain copy
__device__ __forceinline__ void stochastic_rounding(float in, float* out, unsigned int seed) { *out = in; }

#if LLMC_PRECISION_BF16
// Rounds away from zero with probability (low 16 bits)/65536, else truncates: the low half of the f32 pattern is
// forced to all ones (then round-to-nearest rounds up) or to zeros (round-to-nearest is exact).
__device__ __forceinline__ void stochastic_rounding(float in, __nv_bfloat16* out, unsigned int seed) {
    const unsigned int noise = noise_2d(threadIdx.x, blockIdx.x * blockDim.x + blockIdx.y, seed);
    const unsigned int threshold = noise & 0xFFFFu;
    unsigned int bits = __float_as_uint(in);
    bits = ((bits & 0xFFFFu) > threshold) ? (bits | 0xFFFFu) : (bits & ~0xFFFFu);
    *out = __float2bfloat16_rn(__uint_as_float(bits));
}
#endif
