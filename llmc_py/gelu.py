"""GELU, tanh approximation: gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

Design decision: the backward is in place on the gradient (d *= gelu'(x)), the way llm.c runs it on the
scratch buffer that already holds the gradient, and it needs only the saved pre-GELU input x, never the
GELU output. The forward writes `out` while still reading `inp`, so out must not be inp (asserted).
The GPU kernels (kernels_cu/gelu.cu) compute the same formulas in f32 with the fast-math tanhf/coshf.
"""
import math

import numpy as np

from llmc_py.cuda import launch, on_device, precision_of, x128_size

GELU_BLOCK = 512  # kernels_cu/gelu.cu

GELU_SCALING_FACTOR = math.sqrt(2.0 / math.pi)  # python floats: float32 arrays stay float32 (NEP 50)
GELU_CUBE = 0.044715

# ----------------------------------------------------------------------------
# NumPy reference


def gelu_forward(out, inp):
    """out = gelu(inp), elementwise; out and inp same shape, float32, and not overlapping."""
    if on_device(out):
        return _launch("gelu_forward_kernel", out, inp)
    assert not np.may_share_memory(out, inp), "gelu_forward: out must not alias inp"
    np.multiply(inp, inp, out=out)  # out is the scratch for u = k (x + c x^3)
    out *= inp
    out *= GELU_CUBE
    out += inp
    out *= GELU_SCALING_FACTOR
    np.tanh(out, out=out)
    out += 1.0
    out *= inp
    out *= 0.5


def gelu_backward_inplace(d_in_out, inp):
    """d_in_out *= gelu'(inp): on entry the gradient w.r.t. gelu(inp), on return the one w.r.t. inp.

    gelu'(x) = 0.5 (1 + tanh u) + 0.5 x sech^2(u) sqrt(2/pi) (1 + 3*0.044715 x^2),
    u = sqrt(2/pi) (x + 0.044715 x^3),
    with sech^2 u = 1 / cosh^2 u as llm.c computes it: accurate in the tails, where 1 - tanh^2 u has
    cancelled to float32 noise. cosh overflows to inf for |u| > 89, where sech^2 = 0 is the right value.
    """
    if on_device(d_in_out):
        return _launch("gelu_backward_inplace_kernel", d_in_out, inp)
    a = inp * inp
    u = a * GELU_CUBE
    u += 1.0
    u *= inp
    u *= GELU_SCALING_FACTOR
    a *= 3.0 * GELU_CUBE
    a += 1.0
    a *= inp
    a *= 0.5 * GELU_SCALING_FACTOR  # a = 0.5 sqrt(2/pi) x (1 + 3c x^2)
    with np.errstate(over="ignore"):
        cosh_u = np.cosh(u)
        cosh_u *= cosh_u
    a /= cosh_u
    del cosh_u
    np.tanh(u, out=u)
    u += 1.0
    u *= 0.5
    a += u  # the local gradient
    d_in_out *= a

# ----------------------------------------------------------------------------
# launchers (kernels_cu/gelu.cu)


def _launch(kernel, out, inp):
    N = inp.size
    p = precision_of(out)
    X = x128_size(p)
    assert N % X == 0, f"gelu: {N} elements, expected a multiple of {X}"
    launch("gelu", kernel, (math.ceil(N / (GELU_BLOCK * X)),), (GELU_BLOCK,), (out, inp, np.uint64(N)), p)
