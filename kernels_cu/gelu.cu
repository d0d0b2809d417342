// GELU, tanh approximation: gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in f32 on floatX data.
//
// Design decision: the backward runs in place on the gradient buffer (d *= gelu'(x)) and reads only the saved
// pre-GELU input x, never the GELU output; sech^2 is 1/cosh^2 as llm.c computes it (with --use_fast_math both
// tanhf and coshf are the fast approximations, which is what llm.c's numbers come from). out must not be inp.

#include "common.cuh"

#define GELU_BLOCK 512
#define GELU_SCALING_FACTOR 0.7978845608028654f  // sqrt(2/pi)
#define GELU_CUBE 0.044715f

// ----------------------------------------------------------------------------
// kernels

// out (N) = gelu(inp (N)). One thread per 16-byte chunk: grid ceil(N / (GELU_BLOCK*x128::size)), block
// GELU_BLOCK; N % x128::size == 0. Fast: purely bandwidth bound, 128-bit loads and stores; inp is read once more
// by the backward much later, so it is loaded with the streaming hint.
extern "C" __global__ void __launch_bounds__(GELU_BLOCK) gelu_forward_kernel(
        floatX* __restrict__ out, const floatX* __restrict__ inp, size_t N) {
    const size_t idx = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * x128::size;
    if (idx >= N) { return; }
    const x128 x = load128cs(inp + idx);
    x128 o;
    for (int k = 0; k < x128::size; k++) {
        const float xi = x.get(k);
        const float cube = GELU_CUBE * xi * xi * xi;
        o.set(k, 0.5f * xi * (1.0f + tanhf(GELU_SCALING_FACTOR * (xi + cube))));
    }
    store128(out + idx, o);
}

// d_in_out (N) *= gelu'(inp (N)), in place. Same launch as gelu_forward_kernel.
// gelu'(x) = 0.5 (1 + tanh u) + 0.5 x sech^2(u) sqrt(2/pi) (1 + 3*0.044715 x^2), u = sqrt(2/pi)(x + 0.044715 x^3).
extern "C" __global__ void __launch_bounds__(GELU_BLOCK) gelu_backward_inplace_kernel(
        floatX* __restrict__ d_in_out, const floatX* __restrict__ inp, size_t N) {
    const size_t idx = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * x128::size;
    if (idx >= N) { return; }
    const x128 x = load128cs(inp + idx);
    x128 d = load128(d_in_out + idx);
    for (int k = 0; k < x128::size; k++) {
        const float xi = x.get(k);
        const float cube = GELU_CUBE * xi * xi * xi;
        const float u = GELU_SCALING_FACTOR * (xi + cube);
        const float tanh_u = tanhf(u);
        const float cosh_u = coshf(u);
        const float sech2 = 1.0f / (cosh_u * cosh_u);
        const float local_grad = 0.5f * (1.0f + tanh_u)
                               + xi * 0.5f * sech2 * GELU_SCALING_FACTOR * (1.0f + 3.0f * GELU_CUBE * xi * xi);
        d.set(k, local_grad * d.get(k));
    }
    store128(d_in_out + idx, d);
}
