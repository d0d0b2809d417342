"""AdamW update over flat float32 buffers (one parameter tensor, a ZeRO-1 shard, or any slice of them).

Design decision: everything happens in place on the caller's arrays (views into the big flat params,
grads, m, v and master buffers), per element exactly as llm.c's kernel: grad clipping arrives as
`grad_scale` multiplied into each grad; m and v follow llm.c's lerp, beta*m + (g - beta*g) as two fused
multiply-adds, each rounded once to float32 (emulated in float64, where a product of two float32 values
is exact; unfused float32 would round beta*g on its own, and g - beta*g then magnifies that error 10x for
beta1 and 20x for beta2); the bias corrections 1 - beta^t are float32 scalars; weight decay sits inside
the learning-rate term: p = p_old - lr * (mh / (sqrt(vh) + eps) + weight_decay * p_old), in float32.
With master weights the update reads and writes `master` and then copies it into `params`; llm.c rounds
that copy to bf16 stochastically with `seed`, but float32 -> float32 needs no rounding, so on this CPU
path `seed` is accepted and unused. The arrays are walked in blocks of 16384 elements so the temporaries
stay cache-sized; every element still goes through the same vectorized expressions, and on 124M
parameters this measured about 10x faster than whole-array passes (0.8-1.0 s against 9-11 s, 2 vCPUs).
Both functions take llm.c's sliced layout (num_slices slices of n elements, params/grads slice y at y*w_stride,
m/v/master at y*s_stride): one call per parameter tensor, its layers as slices. On the GPU that is one launch
(kernels_cu/adamw.cu) whose grid (ceil(n/512), num_slices) fixes the stochastic-rounding noise of every element.
The values that change from step to step arrive in small arrays, not as numbers: `hyper` (learning rate, weight
decay, the bias corrections of step t; `adamw_hyper` fills it), `grad_scale` and `seed`. On the GPU they are device
memory the kernel reads, so an update captured once as a CUDA graph sees each step's values when replayed.
"""
import math

import numpy as np

from llmc_py.cuda import NULL, launch, on_device, precision_of

ADAMW_BLOCK = 512  # kernels_cu/adamw.cu: part of the result (the rounding noise depends on the thread mapping)
# hyper[]: kernels_cu/adamw.cu's HYPER_* indices
HYPER_LR, HYPER_WEIGHT_DECAY, HYPER_BETA1_CORRECTION, HYPER_BETA2_CORRECTION = range(4)
HYPER_SIZE = 4

_BLOCK = 1 << 14  # elements per block: 64 KiB per float32 temporary

# ----------------------------------------------------------------------------
# NumPy reference


def _lerp_into(end, start, weight):
    """end = fma(weight, end, fma(-weight, start, start)) in float32, i.e. llm.c's lerp(start, end, weight).

    float64 holds weight*x exactly for float32 weight and x, so each fma is its float64 sum rounded to
    float32; that double rounding differs from a true fma only on exact float32 ties, which are rare.
    """
    w = np.float64(weight)
    s = start.astype(np.float64)
    inner = (s - w * s).astype(np.float32)  # fma(-w, start, start)
    e = end.astype(np.float64)
    e *= w
    e += inner
    np.copyto(end, e, casting="same_kind")  # fma(w, end, inner), rounded once


def _adamw_block(params, grads, m, v, master, lr, beta1, beta2, eps, weight_decay, grad_scale,
                 beta1_correction, beta2_correction):
    g = grads * grad_scale
    _lerp_into(m, g, beta1)  # m = beta1 * m + (1 - beta1) * g
    g *= g
    _lerp_into(v, g, beta2)  # v = beta2 * v + (1 - beta2) * g^2
    # g is free now: it becomes sqrt(vh) + eps, then the update term; mh needs one more temporary
    np.divide(v, beta2_correction, out=g)
    np.sqrt(g, out=g)
    g += eps
    mh = m / beta1_correction
    np.divide(mh, g, out=g)
    p = params if master is None else master
    g += weight_decay * p
    g *= lr
    p -= g
    if master is not None:
        np.copyto(params, master)


def adamw_hyper(out, learning_rate, weight_decay, t, beta1, beta2):
    """Fills out (float32, HYPER_SIZE) with one update's values: learning rate, weight decay and the bias
    corrections 1 - beta^t of step t = step + 1 (powf in float32 on the host, as llm.c). Returns out."""
    f32 = np.float32
    out[HYPER_LR] = f32(learning_rate)
    out[HYPER_WEIGHT_DECAY] = f32(weight_decay)
    out[HYPER_BETA1_CORRECTION] = f32(1.0) - f32(beta1) ** f32(t)
    out[HYPER_BETA2_CORRECTION] = f32(1.0) - f32(beta2) ** f32(t)
    return out


def adamw_update(params, grads, m, v, master, hyper, grad_scale, seed, beta1, beta2, eps, decay,
                 n=None, num_slices=1, w_stride=0, s_stride=0):
    """One AdamW step. params, grads, m, v, master: flat float32 arrays of one length; master may be None
    (then params hold the float32 values being updated). hyper: float32 (HYPER_SIZE,) from adamw_hyper;
    grad_scale: float32 (1,); seed: uint32 (1,), unused on the CPU; decay: whether this tensor takes the
    weight decay in hyper.

    With n given: num_slices slices of n elements, params and grads slice y at y*w_stride, m, v and master
    at y*s_stride (the flat arrays cover the last slice's end)."""
    if on_device(params):
        return _adamw_gpu(params, grads, m, v, master, hyper, grad_scale, seed, beta1, beta2, eps, decay,
                          params.size if n is None else n, num_slices, w_stride, s_stride)
    if n is not None:
        for y in range(num_slices):
            w, s = slice(y * w_stride, y * w_stride + n), slice(y * s_stride, y * s_stride + n)
            adamw_update(params[w], grads[w], m[s], v[s], None if master is None else master[s], hyper, grad_scale,
                         seed, beta1, beta2, eps, decay)
        return
    f32 = np.float32
    beta1, beta2, eps = f32(beta1), f32(beta2), f32(eps)
    lr = f32(hyper[HYPER_LR])
    weight_decay = f32(hyper[HYPER_WEIGHT_DECAY]) if decay else f32(0.0)
    beta1_correction, beta2_correction = f32(hyper[HYPER_BETA1_CORRECTION]), f32(hyper[HYPER_BETA2_CORRECTION])
    scale = f32(grad_scale[0])
    n = params.shape[0]
    for a in (grads, m, v) + (() if master is None else (master,)):
        assert a.shape == (n,), "adamw_update: all buffers must be flat and of one length"
    for start in range(0, n, _BLOCK):  # blocks of the flat buffers, each one fully vectorized
        s = slice(start, start + _BLOCK)
        _adamw_block(params[s], grads[s], m[s], v[s], None if master is None else master[s], lr, beta1,
                     beta2, eps, weight_decay, scale, beta1_correction, beta2_correction)


def init_from_master(params, master, seed, n=None, num_slices=1, w_stride=0, s_stride=0):
    """params = master (float32 copy on the CPU; stochastic rounding to bf16 with `seed` on the GPU, with the
    same thread mapping as adamw_update, so a resumed run gets the bf16 params the last update made).
    Sliced layout as adamw_update: params slice y at y*w_stride, master slice y at y*s_stride."""
    n = params.size if n is None else n
    if on_device(params):
        launch("adamw", "init_from_master_kernel", (math.ceil(n / ADAMW_BLOCK), num_slices), (ADAMW_BLOCK,),
               (params, master, np.uint64(n), np.int64(w_stride), np.int64(s_stride), np.uint32(seed)),
               precision_of(params))
        return
    for y in range(num_slices):
        params[y * w_stride:y * w_stride + n] = master[y * s_stride:y * s_stride + n]

# ----------------------------------------------------------------------------
# launcher (kernels_cu/adamw.cu)


def _adamw_gpu(params, grads, m, v, master, hyper, grad_scale, seed, beta1, beta2, eps, decay, n, num_slices,
               w_stride, s_stride):
    f32 = np.float32
    launch("adamw", "adamw_kernel", (math.ceil(n / ADAMW_BLOCK), num_slices), (ADAMW_BLOCK,),
           (params, NULL if master is None else master, grads, m, v, np.uint64(n), np.int64(w_stride),
            np.int64(s_stride), hyper, grad_scale, seed, f32(beta1), f32(beta2), f32(eps), np.int32(bool(decay))),
           precision_of(params))
