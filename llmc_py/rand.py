"""Random numbers bit-compatible with llm.c (and so with PyTorch's CPU generator), and GPT-2 random init.

Two generators, as in llm.c: MT19937 for weight init and data shuffling, and xorshift64* for the model's
rng_state (stochastic-rounding seeds) and sampling. MT19937 draws come from NumPy's own MT19937 bit
generator with the state seeded the way torch seeds it, so millions of draws for a model init run at C
speed while staying bit-identical to torch.Generator.manual_seed; normal_ reproduces torch's Box-Muller
in blocks of 16, including its trick of redrawing the last 16 values when n is not a multiple of 16.
"""
import math
import struct

import numpy as np

from llmc_py import LlmcError

MT_N = 624
MATRIX_A = 0x9908B0DF
MT_STATE_BYTES = 8 + 4 + 4 + 4 * MT_N + 8  # llm.c's mt19937_state struct, 2520 bytes


def _seed_key(seed):
    key = np.empty(MT_N, dtype=np.uint32)
    x = seed & 0xFFFFFFFF
    key[0] = x
    for j in range(1, MT_N):
        x = (1812433253 * (x ^ (x >> 30)) + j) & 0xFFFFFFFF
        key[j] = x
    return key


class MT19937:
    """torch's CPU Mersenne Twister: manual_seed, randint32, uniform floats, normal_, raw state I/O."""

    def __init__(self, seed):
        self._bits = np.random.MT19937(0)
        self._set(_seed_key(seed), MT_N)

    def _set(self, key, pos):
        self._bits.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": pos}}

    def randint32(self, n=None):
        """One u32 (n None) or an array of n u32 draws."""
        if n is None:
            return int(self._bits.random_raw())
        return self._bits.random_raw(n).astype(np.uint32)

    def randfloat32(self, n):
        return (self.randint32(n) & np.uint32(0xFFFFFF)).astype(np.float32) / np.float32(1 << 24)

    def randfloat64(self):
        # u64 from two draws, the first in the high word (the order torch's random64 uses).
        hi = self.randint32()
        lo = self.randint32()
        return float(((hi << 32) | lo) & ((1 << 53) - 1)) / float(1 << 53)

    def normal_(self, n, mean=0.0, std=1.0):
        """n normal float32 values, consuming the generator exactly as torch's normal_ on CPU."""
        if n < 16:
            return self._normal_small(n, mean, std)
        data = self.randfloat32(n)
        full = (n // 16) * 16
        _box_muller16(data[:full].reshape(-1, 16), mean, std)
        if n % 16:
            data[n - 16:] = self.randfloat32(16)
            _box_muller16(data[n - 16:].reshape(1, 16), mean, std)
        return data

    def _normal_small(self, n, mean, std):
        out = np.empty(n, dtype=np.float32)
        cached = None
        for i in range(n):
            if cached is not None:
                out[i], cached = cached, None
                continue
            u1 = self.randfloat64()
            u2 = self.randfloat64()
            radius = math.sqrt(-2.0 * math.log(1.0 - u2))
            theta = 2.0 * math.pi * u1
            out[i] = radius * math.cos(theta) * std + mean
            cached = radius * math.sin(theta) * std + mean
        return out

    def state_bytes(self):
        """llm.c's 2520-byte struct: seed_ (written as 0; llm.c leaves it uninitialized), left_, next_,
        the 624 state words, MATRIX_A."""
        s = self._bits.state["state"]
        pos = int(s["pos"])
        left = MT_N + 1 - pos
        return (struct.pack("<QiI", 0, left, pos % MT_N)
                + np.asarray(s["key"], dtype="<u4").tobytes() + struct.pack("<II", 0, MATRIX_A))

    @classmethod
    def from_state_bytes(cls, raw, source="state file"):
        if len(raw) != MT_STATE_BYTES:
            raise LlmcError(f"{source}: expected a {MT_STATE_BYTES}-byte Mersenne Twister state, found {len(raw)} bytes")
        _seed, left, _next = struct.unpack_from("<QiI", raw, 0)
        if not 1 <= left <= MT_N:
            raise LlmcError(f"{source}: Mersenne Twister state has left_ = {left}, expected 1..{MT_N}")
        mt = cls(0)
        mt._set(np.frombuffer(raw, dtype="<u4", count=MT_N, offset=16).astype(np.uint32), MT_N + 1 - left)
        return mt


# ---- torch's AVX2 Box-Muller, reproduced bit for bit ---------------------------------------------------
#
# torch's CPU normal_ on float32 (n >= 16, contiguous) runs NormalFill16<float> from
# aten/src/ATen/native/cpu/DistributionTemplates.h. On x86 the AVX2 build of that kernel is used (on AVX512
# machines too: it has no AVX512 build, so dispatch falls back to AVX2; torch forced to the DEFAULT
# capability, or a non-x86 build, uses libm instead and gives different values). It computes
# log and sin/cos with log256_ps / sincos256_ps from avx_mathfun.h, i.e. Cephes' single-precision
# polynomials (via Pommier's sse_mathfun), not with libm. GCC contracted several of that code's
# multiply-then-add pairs into FMA instructions; which ones was read off the disassembly of
# libtorch_cpu.so (torch 2.13.0+cpu), and the helpers below fuse exactly those and round every other
# step to float32 on its own. Any deviation shows up as 1-ulp mismatches in a few percent of values.

_F32, _F64 = np.float32, np.float64

# Cephes constants, rounded to float32 exactly as the C initializers round them.
_SQRTHF = _F32(0.707106781186547524)
_LOG_P = tuple(_F32(c) for c in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                                 1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                                 3.3333331174e-1))
_LOG_Q1, _LOG_Q2 = _F32(-2.12194440e-4), _F32(0.693359375)
_FOPI = _F32(1.27323954473516)  # 4/pi
_DP = (_F32(-0.78515625), _F32(-2.4187564849853515625e-4), _F32(-3.77489497744594108e-8))  # -pi/4, split
_SINCOF = (_F32(-1.9515295891e-4), _F32(8.3321608736e-3), _F32(-1.6666654611e-1))
_COSCOF = (_F32(2.443315711809948e-5), _F32(-1.388731625493765e-3), _F32(4.166664568298827e-2))
_TWO_PI = _F32(2.0 * math.pi)

_ROWS_PER_CHUNK = 8192  # 16-value blocks per pass: keeps the temporaries cache-sized


def _fma32(a, b, c):
    """float32 fused multiply-add, round(a*b + c) with a single rounding, for float32 operands.

    a*b is exact in float64 (two 24-bit significands need at most 48 bits), so the float64 sum p + c
    carries the only rounding before the final cast to float32. That double rounding can go wrong in one
    case only: the float64 sum lands exactly on a float32 halfway point while the exact sum does not
    (float32 midpoints are float64 numbers, so rounding to float64 can reach one but never cross it).
    Those rare sums are recomputed with an exact TwoSum error term and nudged one float64 ulp toward the
    true value, so the final cast rounds the right way.
    """
    p = np.multiply(a, b, dtype=_F64)
    s = p + c
    # A float32 midpoint has float64 fraction bits 28..0 equal to 1 followed by 28 zeros.
    tie = (s.view(np.uint64) & np.uint64(0x1FFFFFFF)) == np.uint64(0x10000000)
    if tie.any():
        idx = np.nonzero(tie)
        pt, st = p[idx], s[idx]
        ct = np.broadcast_to(np.asarray(c, dtype=_F64), s.shape)[idx]
        bv = st - pt
        err = (pt - (st - bv)) + (ct - bv)  # TwoSum: exact (p + c) - s
        s[idx] = np.where(err == 0, st, np.nextafter(st, np.copysign(np.inf, err)))
    return s.astype(_F32)


def _cephes_log(x):
    """log of float32 x in (0, 1], op for op as log256_ps in torch's AVX2 build.

    x >= 2**-24 here, so the kernel's denormal clamp and its NaN mask for x <= 0 never act.
    """
    bits = x.view(np.uint32)
    # Split x = m * 2**e with m in [0.5, 1): the exponent from the bits, m by forcing exponent 126.
    e = ((bits >> np.uint32(23)).astype(np.int32) - np.int32(127)).astype(_F32) + _F32(1)
    m = ((bits & np.uint32(0x807FFFFF)) | np.uint32(0x3F000000)).view(_F32)
    # Fold m into [sqrt(1/2), sqrt(2)) and subtract 1: m becomes 2m - 1 (with e one less) or m - 1.
    small = m < _SQRTHF
    e = e - np.where(small, _F32(1), _F32(0))
    m = (m - _F32(1)) + np.where(small, m, _F32(0))
    z = m * m
    y = np.full_like(m, _LOG_P[0])
    for coef in _LOG_P[1:]:
        y = _fma32(y, m, coef)  # Horner steps: fused
    y = m * y  # rounded on its own
    y = _fma32(y, z, e * _LOG_Q1)  # e*q1 rounded first, then fused into y*z + (e*q1)
    y = y - z * _F32(0.5)  # fused in torch too, but z*0.5 is exact, so a plain subtraction is the same
    # e*q2 is exact (small integer times a 9-bit constant), so the final fused add is a plain add.
    return (m + y) + e * _LOG_Q2


def _cephes_sincos(x):
    """(sin, cos) of float32 x in [0, 2*pi), op for op as sincos256_ps in torch's AVX2 build.

    x >= 0 here, so the kernel's absolute value and input-sign handling are no-ops and left out.
    """
    # Octant index j = (trunc(x * 4/pi) + 1) rounded down to even, and reduced argument x - j*pi/4.
    j = ((x * _FOPI).astype(np.int32) + np.int32(1)) & np.int32(~1)
    y = j.astype(_F32)
    r = _fma32(y, _DP[0], x)  # the three-part Cody-Waite reduction, each step fused
    r = _fma32(y, _DP[1], r)
    r = _fma32(y, _DP[2], r)
    z = r * r
    # cos polynomial on the reduced argument: 1 - z/2 + z*z*(c0*z^2 + c1*z + c2)
    pc = _fma32(_fma32(np.full_like(z, _COSCOF[0]), z, _COSCOF[1]), z, _COSCOF[2])
    pc = z * pc
    pc = _fma32(z, pc, -(z * _F32(0.5))) + _F32(1)
    # sin polynomial: r + r*z*(s0*z^2 + s1*z + s2)
    ps = _fma32(_fma32(np.full_like(z, _SINCOF[0]), z, _SINCOF[1]), z, _SINCOF[2])
    ps = z * ps
    ps = _fma32(r, ps, r)
    # Octants with bit 1 of j set swap the two polynomials; the sign flips come from bit 2 of j and of j-2.
    swap = (j & np.int32(2)) != 0
    sin = np.where(swap, pc, ps)
    cos = np.where(swap, ps, pc)
    sin = np.where((j & np.int32(4)) != 0, -sin, sin)
    cos = np.where(((j - np.int32(2)) & np.int32(4)) == 0, -cos, cos)
    return sin, cos


def _box_muller16(blocks, mean, std):
    """In place on (nblocks, 16) uniforms: slots t and t+8 become the cos and sin normals of pair t,
    bit-identical to torch's AVX2 NormalFill16: u1 = 1 - d[t], u2 = d[t+8],
    radius = sqrt(-2*log(u1)), theta = 2pi*u2, out = fma(radius*cos|sin(theta), std, mean)."""
    mean, std = _F32(mean), _F32(std)
    for start in range(0, blocks.shape[0], _ROWS_PER_CHUNK):
        d = blocks[start:start + _ROWS_PER_CHUNK]
        u1 = _F32(1) - d[:, :8]
        theta = _TWO_PI * d[:, 8:]
        radius = np.sqrt(_F32(-2) * _cephes_log(u1))
        sin, cos = _cephes_sincos(theta)
        d[:, :8] = _fma32(radius * cos, std, mean)
        d[:, 8:] = _fma32(radius * sin, std, mean)


def random_u32(state):
    """xorshift64*: returns (u32, new state)."""
    state ^= state >> 12
    state ^= (state << 25) & 0xFFFFFFFFFFFFFFFF
    state ^= state >> 27
    return ((state * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF) >> 32, state


def random_f32(state):
    """Uniform float in [0, 1) from xorshift64*: returns (value, new state)."""
    u, state = random_u32(state)
    return (u >> 8) / 16777216.0, state


def gpt2_random_init(config):
    """The flat float32 parameters of a fresh model, drawn exactly as llm.c's -e dN init (and torch's
    module init order in train_gpt2.py): one MT19937 seeded 42, N(0, 0.02) weights, residual projections
    scaled by 1/sqrt(2L), layernorm weights 1, biases 0, padded vocab rows 0."""
    L, C, V = config.num_layers, config.channels, config.vocab_size
    params = np.zeros(config.num_parameters, dtype=np.float32)
    offsets, sizes = config.param_offsets(), config.param_sizes()
    rng = MT19937(42)
    residual_std = 0.02 / math.sqrt(2 * L)
    for i in (2, 8, 14):
        params[offsets[i]:offsets[i] + sizes[i]] = 1.0
    params[offsets[0]:offsets[0] + V * C] = rng.normal_(V * C, 0.0, 0.02)
    params[offsets[1]:offsets[1] + sizes[1]] = rng.normal_(sizes[1], 0.0, 0.02)
    for layer in range(L):
        for i, std in ((4, 0.02), (6, residual_std), (10, 0.02), (12, residual_std)):
            n = sizes[i] // L
            start = offsets[i] + layer * n
            params[start:start + n] = rng.normal_(n, 0.0, std)
    return params
