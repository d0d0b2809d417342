"""The CUDA backend's code path, run on a CPU against tests/fake_gpu.py (fake cupy and nvmath bindings).

No GPU here, so this is what stands between the GPU code and its first real run. Every kernel launch is checked
against the kernel's parsed `extern "C"` signature (argument count and C types, device arrays of the right
dtype, alignment, grid/block/shared-memory limits, per-kernel coverage and buffer sizes), every cuBLAS/cuBLASLt
call against the device allocations its raw pointers fall in (m/n/k, transposes, leading dimensions, epilogue
pointers, stream). With the fake's emulation (kernels in NumPy, GEMMs computed from the raw pointers in
column-major), the GPU orchestration must reproduce the CPU path: fp32 to float32 rounding, bf16 to bf16's.
What none of this can show is whether the CUDA kernels and the real libraries compute what the emulation
assumes: tests/test_kernels_gpu.py and test_gpt2cu.py on a GPU do that.
"""
import json
import re
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import fake_gpu
from conftest import load_program
from llmc_py import LlmcError
from llmc_py.checkpoint import read_model, read_model_header, write_debug_state, write_model
from llmc_py.config import GPT2Config
from llmc_py.rand import gpt2_random_init

TINY = GPT2Config(max_seq_len=32, vocab_size=1000, padded_vocab_size=1024, num_layers=2, num_heads=4, channels=64)
B, T = 2, 16
REPO_ROOT = fake_gpu.KERNELS_DIR.parent
UNUSED_KERNELS = {"cast_f32_to_floatX_kernel"}  # compiled and tested on the GPU, no caller in the training path


@pytest.fixture(scope="module")
def tiny_params():
    return gpt2_random_init(TINY)


@pytest.fixture
def fake(monkeypatch):
    """The fake GPU with launch and BLAS checks only (fast)."""
    gpu = fake_gpu.install(monkeypatch)
    from llmc_py import cuda
    cuda.init_device(0)
    return gpu


@pytest.fixture
def emulated(monkeypatch):
    """The fake GPU that also computes every kernel and GEMM."""
    gpu = fake_gpu.install(monkeypatch, emulate=True)
    from llmc_py import cuda
    cuda.init_device(0)
    return gpu


def batches(n, V=1000, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tokens = rng.integers(0, V, (B, T + 1)).astype(np.int32)
        out.append((tokens[:, :-1].copy(), tokens[:, 1:].copy()))
    return out


def train(model, data, steps=3, accum=2, lr=1e-3, wd=0.1):
    """Steps of `accum` micro steps, llm.c's clipping; returns [(mean loss, grad norm squared)]."""
    out, it = [], iter(data)
    for step in range(steps):
        for micro in range(accum):
            x, y = next(it)
            model.forward(x)
            model.backward(x, y, accum, micro)
        norm2 = model.grad_norm_squared()
        norm = norm2 ** 0.5
        model.update(lr, wd, 1.0 / norm if norm > 1.0 else 1.0, step + 1)
        out.append((model.mean_loss, norm2))
    return out


def assert_params_close(got, ref, atol, within=0.999, worst=5e-5):
    """Adam's normalized step turns float32 noise in a near-zero gradient into a visible change of a few
    near-zero parameters (biases from 0): almost all must agree to atol, and none may be off by more than
    `worst` (a misplaced or missing update moves whole tensors by ~lr = 1e-3 per step)."""
    err = np.abs(got - ref)
    assert np.mean(err <= atol) >= within, f"only {np.mean(err <= atol):.5f} of the parameters within {atol}"
    assert err.max() <= worst, f"a parameter is off by {err.max()}"


def gpt2(params, **kwargs):
    from llmc_py.gpt2 import GPT2
    model = GPT2(TINY, params.copy(), **kwargs)
    model.allocate(B, T)
    return model

# ----------------------------------------------------------------------------
# the kernel signatures and the launch checker


def test_every_kernel_signature_parses():
    names = set()
    for stem, source in fake_gpu.kernel_sources().items():
        kernels = fake_gpu.parse_kernels(source)
        assert len(kernels) == source.count('extern "C" __global__'), f"{stem}.cu: a kernel escaped the parser"
        for name, sig in kernels.items():
            for pname, kind, ctype in sig["params"]:
                known = (kind == "ptr" and ctype == "floatX") or \
                    ctype in (fake_gpu.POINTEE_TYPES if kind == "ptr" else fake_gpu.SCALAR_TYPES)
                assert known, f"{stem}.cu {name}: parameter {pname} of unknown type {ctype!r}"
            names.add(name)
    adamw = fake_gpu.parse_kernels(fake_gpu.kernel_sources()["adamw"])["adamw_kernel"]
    assert adamw["bound"] == 512
    assert [p[0] for p in adamw["params"]][:8] == ["params", "master", "grads", "m", "v", "n", "w_stride", "s_stride"]
    assert [p[2] for p in adamw["params"]][5:8] == ["size_t", "ptrdiff_t", "ptrdiff_t"]
    assert len(names) == 28


def test_launch_checker_catches_mistakes(fake):
    """The checker is only worth its silence if it speaks up: each classic launch mistake is caught."""
    import cupy
    from llmc_py.cuda import launch
    C, X = 64, 8
    out = cupy.zeros(B * T * C, dtype=cupy.uint16)
    inp = cupy.zeros((B, T), dtype=cupy.int32)
    wte, wpe = cupy.zeros(1024 * C, dtype=cupy.uint16), cupy.zeros(32 * C, dtype=cupy.uint16)
    grid = (-(-B * T * C // (256 * X)),)
    good = (out, inp, wte, wpe, np.int32(B), np.int32(T), np.int32(C))
    launch("encoder", "encoder_forward_kernel", grid, (256,), good, "bf16")
    bad = [
        ((out, inp, wte, wpe, B, np.int32(T), np.int32(C)), grid, (256,), "expected int32, got int"),
        ((out, inp, wte, wpe, np.int64(B), np.int32(T), np.int32(C)), grid, (256,), "expected int32, got int64"),
        ((out, np.zeros((B, T), np.int32), wte, wpe, *good[4:]), grid, (256,), "expected a device array"),
        ((out, inp, wte, wpe, *good[4:6]), grid, (256,), "6 arguments for 7 parameters"),
        (good, grid, (128,), "built for 256"),
        (good, (grid[0] - 1,), (256,), "grid"),
        ((out[1:], inp, wte, wpe, *good[4:]), grid, (256,), "not 16-byte aligned"),
        ((out, inp, wte.reshape(1024, C)[:, :32], wpe, *good[4:]), grid, (256,), "not C-contiguous"),
        ((cupy.zeros(B * T * C, dtype=cupy.float32), inp, wte, wpe, *good[4:]), grid, (256,), "dtype float32"),
        ((out, inp, np.uint64(0), wpe, *good[4:]), grid, (256,), "null pointer"),
        ((out[:B * T * C - 8], inp, wte, wpe, *good[4:]), grid, (256,), "out"),
    ]
    for args, g, block, message in bad:
        with pytest.raises(AssertionError, match=re.escape(message)):
            launch("encoder", "encoder_forward_kernel", g, block, args, "bf16")
    with pytest.raises(AssertionError, match="shared memory"):
        launch("layernorm", "layernorm_forward_kernel", (4,), (256,),
               (out, np.uint64(0), np.uint64(0), out, wte[:C], wte[:C], np.int32(B * T), np.int32(C)), "bf16",
               shared_mem=100)


def test_blas_checker_catches_mistakes(fake):
    """A leading dimension too small, or a footprint leaving its allocation, is caught at the pointer level."""
    import cupy
    from llmc_py import blas
    ctx = blas.context()
    a = cupy.zeros((8, 16), dtype=cupy.float32)
    out = cupy.zeros((8, 8), dtype=cupy.float32)
    blas.matmul(out, a, a, trans_b=True)  # fine: (8,16) @ (16,8)
    with pytest.raises(LlmcError, match="leading dimension"):  # the fake's assertion, wrapped by blas.py
        ctx.sgemm(False, False, 8, 8, 16, a.data.ptr, 4, a.data.ptr, 16, out.data.ptr, 8)
    with pytest.raises(LlmcError, match="not inside one device allocation"):
        ctx.sgemm(False, False, 16, 16, 16, a.data.ptr, 16, a.data.ptr, 16, out.data.ptr, 16)
    with pytest.raises(ValueError, match="do not fit"):
        blas.matmul(out, a, a)
    # cublasSetStream drops a user workspace: a GEMM after set_stream alone would run on cuBLAS's own pool
    import nvmath.bindings.cublas as cublas
    cublas.set_stream(ctx.handle, ctx.stream)
    with pytest.raises(LlmcError, match="set_workspace after every set_stream"):
        ctx.sgemm(False, False, 8, 8, 16, a.data.ptr, 8, a.data.ptr, 16, out.data.ptr, 8)


def test_fakes_are_the_real_libraries_api(fake):
    """The fakes take what the installed CuPy, nvmath-python and CuPy's NCCL take, and refuse the rest: names and
    enum values are the real ones, and every call is bound to the real signature with its C types."""
    import cupy
    import nvmath.bindings.cublas as cublas
    import nvmath.bindings.cublasLt as lt
    real = fake_gpu.real_libraries()
    assert cublas.Operation is real.cublas.Operation and lt.Epilogue is real.lt.Epilogue
    assert lt.matmul_heuristic_result_dtype == real.lt.matmul_heuristic_result_dtype
    for module in (cupy, cupy.cuda, cupy.cuda.runtime, cupy.cuda.nccl, cublas, lt):
        for name, value in vars(module).items():
            if callable(value) and not isinstance(value, type) and not name.startswith("_") \
                    and getattr(value, "__module__", None) == fake_gpu.__name__:
                assert hasattr(value, "__wrapped__"), f"{module.__name__}.{name} is not checked against the real API"
    a = cupy.zeros((8, 16), dtype=cupy.float32)
    h = cublas.create()
    cases = [
        (lambda: cublas.sgemm(h, 0, 0, 8, 8, 16, 0, a.data.ptr, 8.0, 0, 16, 0, 0, 8), "lda is a C int, got float"),
        (lambda: cublas.sgemm(h, 0, 0, 8, 8, 16, 0, a.data.ptr, 2 ** 31, 0, 16, 0, 0, 8), "does not fit a C int"),
        (lambda: cublas.set_workspace(h, a.data.ptr), "missing a required argument"),
        (lambda: lt.matrix_layout_create(type_=0, rows=8, cols=8, ld=8), "missing a required argument: 'type'"),
        (lambda: cupy.RawModule(code="", options=["-DENABLE_BF16"]), "options must be tuple"),
        (lambda: cupy.cuda.nccl.NcclCommunicator(1, tuple(range(128)), 0), "commId must be bytes"),
        (lambda: cupy.cuda.Stream(True, False, False, 0, 1), "too many positional arguments"),
    ]
    for call, message in cases:
        with pytest.raises(AssertionError, match=re.escape(message)):
            call()
    with pytest.raises(ValueError, match="Shape mismatch"):  # CuPy's set() wants the shape, not just the size
        a.set(np.zeros(8 * 16, np.float32))
    with pytest.raises(AttributeError):
        cublas.GemmAlgo.DEFAULT_ALGO  # an enum member the real library lacks is missing here too
    sig = fake_gpu.real_api("cublasLt.matrix_layout_create")
    assert list(sig.signature.parameters) == ["type", "rows", "cols", "ld"] and sig.ctypes["ld"] == "int64_t"


@pytest.mark.parametrize("failure", ["ImportError", "RuntimeError"])
def test_nvmath_bindings_load_without_its_high_level_packages(failure):
    """nvmath's package __init__ imports cuda-core (and through it cuda-bindings), which the GPU machine may lack
    or have for another CUDA; llmc_py.blas then loads the cuBLAS bindings on their own (in a fresh process)."""
    code = f"""
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "cuda" and name.split(".")[1:2] in (["core"], ["bindings"]):
            raise {failure}("refused: " + name)
sys.meta_path.insert(0, Refuse())
from llmc_py.blas import _import_bindings
cublas, lt = _import_bindings()
print(cublas.__name__, lt.__name__, int(lt.Epilogue.GELU_AUX_BIAS), "cuda.core" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["nvmath.bindings.cublas", "nvmath.bindings.cublasLt", "164", "False"]


def test_cublas_workspace_survives_a_stream_change(fake):
    """A new current stream (the capture stream of a CUDA graph, say) reaches cuBLAS with our workspace again."""
    import cupy
    from llmc_py import blas
    a, out = cupy.zeros((8, 16), dtype=cupy.float32), cupy.zeros((8, 8), dtype=cupy.float32)
    blas.matmul(out, a, a, trans_b=True)
    cupy.cuda.Stream(non_blocking=True).use()
    blas.matmul(out, a, a, trans_b=True)  # the fake refuses a GEMM without our workspace on the handle
    blas.batched_matmul(out.reshape(1, 8, 8), a.reshape(1, 8, 16), a.reshape(1, 8, 16), trans_b=True)


def test_cublaslt_plan_serves_less_aligned_views(emulated):
    """A cuBLASLt algorithm is chosen once per shape and reused for every view of that shape: chosen on
    256-byte aligned buffers, it must still run on views only 16 bytes aligned (per-layer slices of an odd B*T,
    C=1600, the sampler's B=1); cuBLASLt assumes 256 unless told the real minimum."""
    from llmc_py import blas
    rng = np.random.default_rng(3)
    M, N, K = 3, 16, 24
    x, w, bias = (rng.standard_normal(shape).astype(np.float32) for shape in ((2, M, K), (N, K), (N,)))
    w_d, bias_d = _dev(w, np.uint16), _dev(bias, np.uint16)
    x_d = _dev(x.reshape(2 * M, K), np.uint16)            # row M starts 3*24*2 = 144 bytes in: 16-byte aligned
    out_d, aux_d = (_dev(np.zeros((2 * M + 1, N), np.float32), np.uint16) for _ in range(2))
    for i, row in ((0, 0), (1, M)):
        out, aux = out_d[row + i:row + i + M], aux_d[row + i:row + i + M]   # rows 0.. then 4..: 128-byte offsets
        blas.matmul(out, x_d[row:row + M], w_d, trans_b=True, bias=bias_d, gelu_aux=aux)
        expected = _q(x[i], np.uint16) @ _q(w, np.uint16).T + _q(bias, np.uint16)
        np.testing.assert_allclose(_host(aux), expected, rtol=2e-2, atol=2e-2)

# ----------------------------------------------------------------------------
# row-major GEMMs through the column-major libraries


def _host(a):
    from llmc_py.cuda import to_host
    return to_host(a)


def _dev(values, dtype):
    import cupy
    from llmc_py.cuda import host_floatx
    host = host_floatx(values, "bf16" if dtype == np.uint16 else "fp32")
    out = cupy.empty(host.shape, dtype=host.dtype)
    out.set(host)
    return out


def _q(values, dtype):
    """values as the device stores them (bf16-rounded for uint16)."""
    v = np.asarray(values, np.float32)
    return v.astype(ml_dtypes.bfloat16).astype(np.float32) if dtype == np.uint16 else v


@pytest.mark.parametrize("dtype", [np.float32, np.uint16], ids=["fp32", "bf16"])
def test_blas_row_major_semantics(emulated, dtype):
    """Every transpose combination, accumulation and (bf16) epilogue against NumPy, computed by the fake from the
    raw pointers and leading dimensions blas.py hands cuBLAS: the row-major -> column-major mapping is right."""
    from llmc_py import blas
    from llmc_py.gelu import gelu_backward_inplace, gelu_forward
    rng = np.random.default_rng(0)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=2e-2, atol=2e-2)
    M, N, K = 24, 40, 16
    for trans_a in (False, True):
        for trans_b in (False, True):
            a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
            b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
            c0 = rng.standard_normal((M, N)).astype(np.float32)
            out = _dev(c0, dtype)
            blas.matmul(out, _dev(a, dtype), _dev(b, dtype), trans_a=trans_a, trans_b=trans_b, accumulate=True)
            qa, qb = _q(a, dtype), _q(b, dtype)
            expected = _q(c0, dtype) + (qa.T if trans_a else qa) @ (qb.T if trans_b else qb)
            np.testing.assert_allclose(_host(out), expected, **tol)
            # batched: three independent problems with one call
            a3 = rng.standard_normal((3,) + a.shape).astype(np.float32)
            b3 = rng.standard_normal((3,) + b.shape).astype(np.float32)
            out3 = _dev(np.zeros((3, M, N), np.float32), dtype)
            blas.batched_matmul(out3, _dev(a3, dtype), _dev(b3, dtype), trans_a=trans_a, trans_b=trans_b)
            qa3, qb3 = _q(a3, dtype), _q(b3, dtype)
            expected3 = (qa3.swapaxes(1, 2) if trans_a else qa3) @ (qb3.swapaxes(1, 2) if trans_b else qb3)
            np.testing.assert_allclose(_host(out3), expected3, **tol)
    if dtype == np.float32:
        a, w = rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((N, K)).astype(np.float32)
        out = _dev(np.zeros((M, N), np.float32), np.float32)
        a16, w16 = (_dev(np.zeros(x.shape, np.float32), np.uint16) for x in (a, w))
        for dst, src in ((a16, a), (w16, w)):
            dst.set(src.astype(np.float16).view(np.uint16))
        blas.matmul_f16(out, a16, w16, trans_b=True)
        expected = a.astype(np.float16).astype(np.float32) @ w.astype(np.float16).astype(np.float32).T
        np.testing.assert_allclose(_host(out), expected, rtol=1e-5, atol=1e-5)
        return
    # bf16 epilogues: out = inp @ W^T + bias, with GELU (aux = pre-GELU), and DGELU
    inp, w = rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((N, K)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    pre = _q(inp, dtype) @ _q(w, dtype).T + _q(bias, dtype)
    out, aux = _dev(np.zeros((M, N), np.float32), dtype), _dev(np.zeros((M, N), np.float32), dtype)
    blas.matmul(out, _dev(inp, dtype), _dev(w, dtype), trans_b=True, bias=_dev(bias, dtype))
    np.testing.assert_allclose(_host(out), pre, **tol)
    blas.matmul(out, _dev(inp, dtype), _dev(w, dtype), trans_b=True, bias=_dev(bias, dtype), gelu_aux=aux)
    gelu = np.empty_like(pre)
    gelu_forward(gelu, pre)
    np.testing.assert_allclose(_host(aux), pre, **tol)
    np.testing.assert_allclose(_host(out), gelu, **tol)
    dout = rng.standard_normal((M, N)).astype(np.float32)
    pre_gelu = rng.standard_normal((M, K)).astype(np.float32)
    dinp = _dev(np.zeros((M, K), np.float32), dtype)
    blas.matmul(dinp, _dev(dout, dtype), _dev(w, dtype), dgelu_aux=_dev(pre_gelu, dtype))
    expected = _q(dout, dtype) @ _q(w, dtype)
    gelu_backward_inplace(expected, _q(pre_gelu, dtype))
    np.testing.assert_allclose(_host(dinp), expected, **tol)

# ----------------------------------------------------------------------------
# the whole model: GPU path against the CPU path


CASES = [
    ("fp32", dict(), "cublas"),
    ("fp32", dict(recompute=0, gelu_fusion=1), "cublas"),
    ("fp32", dict(recompute=2, gelu_fusion=2), "custom"),
    ("fp32", dict(), "fp16fc"),
    ("bf16", dict(), "cublas"),
    ("bf16", dict(recompute=0, gelu_fusion=2), "cublas"),
    ("bf16", dict(recompute=2, gelu_fusion=1, use_master_weights=False), "cublas"),
    ("bf16", dict(attention="llmc"), "cublas"),  # the bf16 cases above take cuDNN's attention (auto)
]


@pytest.mark.parametrize("precision,flags,matmul", CASES,
                         ids=[f"{p}-{m}-" + "-".join(f"{k}{v}" for k, v in f.items()) for p, f, m in CASES])
def test_gpu_path_matches_cpu(emulated, tiny_params, precision, flags, matmul):
    """3 steps of 2 micro steps and a validation batch: losses and grad norms as the CPU path computes them
    (fp32 to float32 rounding, the fp16 variant and bf16 to their own), then the parameters."""
    data = batches(7)
    emulated.emulate = False  # the CPU reference runs on NumPy only
    cpu = gpt2(tiny_params, **flags)
    expected = train(cpu, data)
    expected_val = cpu.validate(*data[-1])
    emulated.emulate = True
    model = gpt2(tiny_params, device="cuda", precision=precision, matmul=matmul, **flags)
    assert model.attention == flags.get("attention", "cudnn" if precision == "bf16" else "llmc")
    got = train(model, data)
    val = model.validate(*data[-1])
    exact = precision == "fp32" and matmul != "fp16fc"
    rtol = {True: 2e-6, False: 2e-3}[exact]
    for (loss, norm2), (ref_loss, ref_norm2) in zip(got, expected):
        assert loss == pytest.approx(ref_loss, rel=rtol)
        assert norm2 == pytest.approx(ref_norm2, rel=50 * rtol)
    assert val == pytest.approx(expected_val, rel=rtol)
    params, ref = model.host(model.params), cpu.params
    if exact:
        assert_params_close(params, ref, atol=2e-6)
    else:  # bf16 storage: most parameters within bf16 rounding of the CPU's; none far off
        err = np.abs(params - ref)
        assert np.mean(err <= 1e-2 * np.abs(ref) + 2e-4) > 0.99 and err.max() < 0.05
    assert model.host(model.params).dtype == np.float32


@pytest.mark.parametrize("rank", [0, 1])
def test_zero1_shard_matches_cpu(emulated, tiny_params, rank):
    """ZeRO-1 rank `rank` of 2 (its reductions are no-ops here): the sliced AdamW, grad-norm and master-weight
    launches (strides, offsets, per-layer slices) update exactly the parts the CPU path updates."""
    from llmc_py.gpt2 import Shard
    data = batches(6, seed=1)
    shard = Shard(zero_stage=1, process_rank=rank, num_processes=2)
    emulated.emulate = False
    cpu = gpt2(tiny_params, shard=shard)
    expected = train(cpu, data)
    emulated.emulate = True
    model = gpt2(tiny_params, device="cuda", precision="fp32", shard=shard)
    got = train(model, data)
    for (loss, norm2), (ref_loss, ref_norm2) in zip(got, expected):
        assert loss == pytest.approx(ref_loss, rel=2e-6) and norm2 == pytest.approx(ref_norm2, rel=1e-4)
    params = model.host(model.params)
    # exactly the owned half of every tensor's layer slices moved, on both paths
    assert np.array_equal(params != tiny_params, cpu.params != tiny_params)
    assert 0.45 < np.mean(params != tiny_params) <= 0.5
    assert_params_close(params, cpu.params, atol=2e-6)
    assert_params_close(model.host(model.master), cpu.master, atol=2e-6)
    assert_params_close(model.host(model.m), cpu.m, atol=1e-7)


def allocations_during(run):
    """The sizes of the device allocations made while run() runs, as a CuPy memory hook sees them: every malloc
    from CuPy's pool, whether or not the pool could serve it from its cache (the fake GPU reports all of its own).
    tests/test_gpu_backend.py uses it on a real GPU."""
    import cupy

    class Recorder(cupy.cuda.memory_hook.MemoryHook):
        name = "llmc_allocations_during"

        def __init__(self):
            super().__init__()
            self.sizes = []

        def malloc_preprocess(self, **kwargs):
            self.sizes.append(kwargs["size"])

    recorder = Recorder()
    with recorder:
        run()
    return recorder.sizes


def test_nothing_allocated_inside_a_step(fake, tiny_params):
    """After allocate(), training steps (including the first update), the grad norm, validation and a short
    forward make no device allocation at all, with one process and with NCCL at world size 1."""
    import cupy
    from llmc_py.zero import ProcessInfo, make_communicator
    data = batches(5)
    comm = make_communicator(ProcessInfo(0, 1, 0, "flags", "mpi"), "cuda")
    for model in (gpt2(tiny_params, device="cuda", precision="bf16"),
                  gpt2(tiny_params, device="cuda", precision="fp32", comm=comm)):
        def steps():
            train(model, data, steps=2)
            model.validate(*data[-1])
            model.forward(data[0][0][:1, :5])
        assert allocations_during(steps) == []
    assert allocations_during(lambda: cupy.empty(10, dtype=cupy.float32)) == [40]  # the hook does see them
    assert allocations_during(lambda: model.params.reshape(-1, 2)[:, 0].get()) == [model.params.nbytes // 2]
    assert allocations_during(lambda: model.params.reshape(-1, 4)[:, :2].reshape(-1)) == [model.params.nbytes // 2]


def test_nccl_world_size_1_matches_cpu(emulated, tiny_params):
    """One process on --device cuda reduces through NCCL, as on the GPU: through the fake NCCL (the installed
    CuPy's NCCL signatures, device memory, the current stream) training gives the CPU path's numbers, the
    gradients are averaged in balanced groups, and host scalars come back."""
    from llmc_py.zero import NcclCommunicator, ProcessInfo, make_communicator
    comm = make_communicator(ProcessInfo(0, 1, 0, "flags", "mpi"), "cuda")
    assert isinstance(comm, NcclCommunicator)
    data = batches(4)
    emulated.emulate = False
    expected = train(gpt2(tiny_params), data, steps=2)
    emulated.emulate = True
    got = train(gpt2(tiny_params, device="cuda", precision="fp32", comm=comm), data, steps=2)
    for (loss, norm2), (ref_loss, ref_norm2) in zip(got, expected):
        assert loss == pytest.approx(ref_loss, rel=2e-6) and norm2 == pytest.approx(ref_norm2, rel=1e-4)
    assert emulated.nccl_group_depth == 0
    assert {call[0] for call in emulated.nccl_calls} == {"allReduce"}
    assert len(emulated.nccl_calls) == 2 * (12 * TINY.num_layers + 4 + 1)  # per step: the grads and the loss
    assert comm.all_reduce_scalar(2.5, "avg") == 2.5 and comm.all_reduce_sum(1.25) == 1.25


def test_one_gpu_runs_on_when_nccl_cannot_start(fake, monkeypatch, capsys, tmp_path):
    """NCCL may fail to start on a machine without a usable network interface for its bootstrap; one process has
    nothing to reduce, so it goes on without NCCL, saying so; several processes would have to fail."""
    import cupy
    from llmc_py.zero import ProcessInfo, SingleProcess, make_communicator

    def refuse(*args, **kwargs):
        raise RuntimeError("NCCL_ERROR_SYSTEM_ERROR: unhandled system error\n(bootstrap: no socket interface found)")
    monkeypatch.setattr(cupy.cuda.nccl, "NcclCommunicator", refuse)
    comm = make_communicator(ProcessInfo(0, 1, 0, "flags", "mpi"), "cuda")
    assert type(comm) is SingleProcess
    assert capsys.readouterr().err == ("NCCL did not start (RuntimeError: NCCL_ERROR_SYSTEM_ERROR: unhandled system "
                                       "error (bootstrap: no socket interface found)); one process has nothing to "
                                       "reduce: continuing without it\n")
    with pytest.raises(RuntimeError, match="NCCL_ERROR_SYSTEM_ERROR"):
        make_communicator(ProcessInfo(0, 2, 0, "flags", "fs"), "cuda", fs_path=str(tmp_path))


def test_fused_classifier_refuses_a_vocab_off_the_packet(fake):
    """Each logits row must start on a 16-byte packet: a padded vocab that is not a whole number of packets
    (8 bf16 values, 4 fp32) is refused with one clear error, not run into misaligned loads."""
    import cupy
    from llmc_py.fused_classifier import fused_classifier
    losses, targets = cupy.zeros((2, 3), dtype=cupy.float32), cupy.zeros((2, 3), dtype=cupy.int32)
    dloss = cupy.asarray(np.array([0.1], np.float32))
    with pytest.raises(LlmcError, match="padded vocab size 1004 .* multiple of 8"):
        fused_classifier(cupy.zeros((2, 3, 1004), dtype=cupy.uint16), losses, dloss, targets, 1000)
    fused_classifier(cupy.zeros((2, 3, 1004), dtype=cupy.float32), losses, dloss, targets, 1000)  # 251 fp32 packets
    with pytest.raises(LlmcError, match="at least the vocab"):
        fused_classifier(cupy.zeros((2, 3, 1000), dtype=cupy.float32), losses, dloss, targets, 1001)


def test_missing_cuda_headers_is_one_line(monkeypatch):
    """CuPy 14 raises a RuntimeError before NVRTC runs when no CUDA runtime headers are found: it becomes one
    line naming the CUDA 12 and CUDA 13 packages."""
    fake_gpu.install(monkeypatch, headers_missing=True)
    from llmc_py import cuda
    cuda.init_device(0)
    with pytest.raises(LlmcError) as error:
        cuda.load_module("gelu", "bf16")
    message = str(error.value)
    assert "\n" not in message and message.startswith("gelu.cu (bf16): CuPy finds no CUDA runtime headers")
    assert "nvidia-cuda-runtime-cu12 (CUDA 12)" in message and "nvidia-cuda-runtime (CUDA 13)" in message


def test_memory_report(fake, tiny_params):
    model = gpt2(tiny_params, device="cuda", precision="bf16")
    lines = model.memory_report()
    assert [line.split(" MiB for ")[1] for line in lines[:5]] == [
        "parameter gradients", "activations", "AdamW optimizer state m", "AdamW optimizer state v",
        "master copy of params"]
    assert lines[5].startswith("device memory usage: ") and lines[5].endswith(" MiB")


def test_short_forward_and_sampling_shapes(emulated, tiny_params):
    """A forward smaller than the allocation (sampling runs B=1 and a growing T) gives the CPU's logits."""
    emulated.emulate = False
    cpu = gpt2(tiny_params)
    x = batches(1)[0][0][:1, :5]
    expected = cpu.forward(x).copy()
    emulated.emulate = True
    model = gpt2(tiny_params, device="cuda", precision="fp32")
    got = model.host(model.forward(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert got.shape == (1, 5, TINY.padded_vocab_size)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_checkpoints_on_gpu(emulated, tiny_params, tmp_path, precision):
    """The model file comes from the live floatX parameters (bf16 -> version 5), and a reload from model + state
    file (init-from-master with the last update's seeds) continues with exactly the same losses."""
    from llmc_py.gpt2 import GPT2
    data = batches(12, seed=3)
    model = gpt2(tiny_params, device="cuda", precision=precision)
    train(model, data[:4], steps=2)
    path, state = tmp_path / "model.bin", tmp_path / "state.bin"
    model.write_model(str(path))
    _, version = read_model_header(str(path))
    assert version == (5 if precision == "bf16" else 3)
    _, stored, _ = read_model(str(path))
    assert np.array_equal(np.asarray(stored, np.float32), model.host(model.params))
    loader = FakeLoader()
    model.write_state(str(state), 2, loader)
    after = train(model, data[4:8], steps=2)
    reloaded = GPT2.from_checkpoint(str(path), device="cuda", precision=precision)
    reloaded.allocate(B, T)
    assert reloaded.load_state(str(state), loader) == 2
    again = train(reloaded, data[4:8], steps=2)
    assert again == after


def test_bf16_from_fp32_file_rounds_to_nearest_even(fake, tiny_params, tmp_path):
    from llmc_py.gpt2 import GPT2
    path = tmp_path / "model_v3.bin"
    write_model(str(path), TINY, tiny_params, 3)
    model = GPT2.from_checkpoint(str(path), device="cuda", precision="bf16")
    expected = tiny_params.astype(ml_dtypes.bfloat16).view(np.uint16)
    assert np.array_equal(fake_gpu.plain(model.params), expected)


class FakeLoader:
    """What GPT2.write_state / load_state ask of a loader, without a data file."""
    current_shard_idx, current_sample_idx = 0, 5

    def state(self):
        return None

    def resume(self, shard_idx, sample_idx, loader_state=None):
        assert (shard_idx, sample_idx, loader_state) == (0, 5, None)


def test_every_kernel_is_launched(fake, tiny_params, tmp_path):
    """Across precisions, variants and a resume, the GPU path reaches every kernel of kernels_cu (but the ones
    listed unused): a kernel wired nowhere is noticed."""
    data = batches(4)
    for precision, matmul, flags in (("bf16", "cublas", dict(gelu_fusion=2, recompute=2)),
                                     ("fp32", "custom", dict()), ("fp32", "fp16fc", dict(gelu_fusion=1))):
        model = gpt2(tiny_params, device="cuda", precision=precision, matmul=matmul, **flags)
        train(model, data, steps=1)
        model.write_state(str(tmp_path / "s.bin"), 1, FakeLoader())
        model.load_state(str(tmp_path / "s.bin"), FakeLoader())
    launched = {k for k, *_ in fake.launches}
    every = set()
    for source in fake_gpu.kernel_sources().values():
        every |= set(fake_gpu.parse_kernels(source))
    assert launched == every - UNUSED_KERNELS
    lt_epilogues = {name for name, _ in fake.blas_calls if name.startswith("cublasLt")}
    assert lt_epilogues == {"cublasLt DEFAULT", "cublasLt BIAS", "cublasLt GELU_AUX_BIAS", "cublasLt DGELU"}
    assert {name.split("(")[0] for name, _ in fake.blas_calls} >= {"sgemm", "gemm_ex", "gemm_strided_batched_ex"}


def test_versions_line_and_packages_newer_than_the_driver(fake, monkeypatch):
    """The start-up line names the CUDA stack; a package built for a newer CUDA major than the driver supports is
    one line naming the package to change, before anything runs (the fake driver says CUDA 12.9)."""
    from llmc_py import cuda
    line = cuda.versions_line()
    assert re.fullmatch(r"CUDA driver 12\.9 \| runtime 12\.9 \| cupy 14\.0\.0 \(fake\) \(cupy-cuda12x\) \| "
                        r"cuda-bindings \S+ \| nvmath \S+ \| cuDNN .+ \| NCCL 2\.28\.0", line), line
    cuda.init_device(0)
    fake.driver_version = 11080
    with pytest.raises(LlmcError, match=r"cupy-cuda12x needs a CUDA 12 driver, this driver supports CUDA 11: "
                                        r"install cupy-cuda11x instead \(pip install -r requirements\.txt\)"):
        cuda.init_device(0)
    fake.driver_version = 12090
    real_version = cuda._dist_version
    monkeypatch.setattr(cuda, "_dist_version", lambda name: "13.5.0" if name == "cuda-bindings" else real_version(name))
    with pytest.raises(LlmcError, match=r"cuda-bindings 13\.5\.0 needs a CUDA 13 driver, this driver supports CUDA "
                                        r"12: pip install 'cuda-bindings<13' \(see requirements\.txt\)"):
        cuda.init_device(0)
    fake.driver_version = 13000
    assert cuda.init_device(0).name == "NVIDIA H100 80GB HBM3"


def test_tf32_math_mode(fake, tiny_params):
    gpt2(tiny_params, device="cuda", precision="fp32", tf32=True)
    assert list(fake.math_mode.values())[-1] == 3  # CUBLAS_TF32_TENSOR_OP_MATH
    gpt2(tiny_params, device="cuda", precision="bf16", tf32=True)  # TF32 is for fp32 only
    assert list(fake.math_mode.values())[-1] == 0

# ----------------------------------------------------------------------------
# the programs on the fake GPU


WIDE = GPT2Config(max_seq_len=64, vocab_size=50257, padded_vocab_size=50304, num_layers=2, num_heads=4, channels=64)


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A 2-layer model with GPT-2's vocabulary (so real token data fits) as a version 3 file."""
    path = tmp_path_factory.mktemp("wide") / "wide.bin"
    write_model(str(path), WIDE, gpt2_random_init(WIDE), 3)
    return path


def test_train_program_on_fake_gpu(emulated, d12_dir, wide_model, tmp_path, monkeypatch, capsys):
    """train_gpt2cu.py --device cuda end to end: table, memory lines, step lines with MFU from the device name,
    sampling through the host copy of the logits, checkpoints, and a resume."""
    monkeypatch.chdir(d12_dir)
    train_program = load_program("train_gpt2cu_under_test", "train_gpt2cu.py")
    args = ["-e", str(wide_model), "-b", "2", "-t", "16", "-v", "2", "-m", "1", "-s", "3", "-g", "5",
            "-o", str(tmp_path / "log"), "-n", "3", "-l", "1e-3"]
    assert train_program.main(args + ["-x", "3"]) == 0
    out = capsys.readouterr().out
    assert "| device                | NVIDIA H100 80GB HBM3" in out and "| precision             | BF16" in out
    assert re.search(r"^CUDA driver 12\.9 \| runtime 12\.9 \| cupy .* \| nvmath .* \| cuDNN .* \| NCCL 2\.28\.0$", out, re.M)
    assert ("MFU: against 988.8 TFLOPS, the dense BF16 tensor-core peak of NVIDIA H100 80GB HBM3 (hopper family at "
            "528 tensor cores, 1830 MHz)\n") in out
    assert "allocating" in out and "MiB for activations" in out and "device memory usage:" in out
    steps = re.findall(r"^step +\d+/3 \| loss (\d+\.\d{6}) .*\| 1\.00 ms \| (\d+\.\d)% bf16 MFU \| \d+ tok/s$",
                       out, re.M)
    assert len(steps) == 3, out[-3000:]
    sample = out.split("generating:\n---\n", 1)[1].split("\n---", 1)[0]
    assert len(sample) > 0
    assert (tmp_path / "log" / "DONE_00000003").exists()
    _, version = read_model_header(str(tmp_path / "log" / "model_00000003.bin"))
    assert version == 5
    assert train_program.main(args + ["-x", "4", "-y", "1"]) == 0
    out = capsys.readouterr().out
    assert "resumed from step 3" in out and re.search(r"^step +4/4 \| loss", out, re.M)


def test_one_gpu_failure_is_an_ordinary_error(fake, tmp_path, capsys):
    """NCCL at world size 1 (every one-GPU run) has no other rank to take down: a failing run ends the ordinary
    way, an LlmcError for run_main's one line, not os._exit (which would also drop unflushed output)."""
    train_program = load_program("train_gpt2cu_failing", "train_gpt2cu.py")
    with pytest.raises(LlmcError, match="missing_train.*no files match"):
        train_program.main(["-i", str(tmp_path / "missing_train_*.bin"), "-b", "2", "-t", "16", "-g", "16"])
    assert "error:" not in capsys.readouterr().err  # printed once, by run_main, not also by the communicator


@pytest.fixture(scope="module")
def wide_debug_state(d12_dir, wide_model, tmp_path_factory):
    """The debug state of wide_model written from the CPU path, as train_gpt2.py writes one: the first val batch,
    its logits and step-0 gradients, and the losses of test_gpt2cu's 10 steps."""
    from llmc_py.dataloader import read_shard
    from llmc_py.gpt2 import GPT2
    val = d12_dir / "dev" / "data" / "tinyshakespeare" / "tiny_shakespeare_val.bin"
    tokens = read_shard(str(val)).astype(np.int32)
    x, y = tokens[:B * T].reshape(B, T), tokens[1:B * T + 1].reshape(B, T)
    ref = GPT2.from_checkpoint(str(wide_model))
    ref.allocate(B, T)
    logits = ref.forward(x)[..., :WIDE.vocab_size].copy()
    losses = []
    for step in range(10):
        ref.forward(x)
        ref.backward(x, y, 1, 0)
        if step == 0:
            loss0, grads = ref.mean_loss, ref.grads.copy()
        norm = np.sqrt(ref.grad_norm_squared())
        ref.update(1e-4, 0.0, 1.0 / norm if norm > 1.0 else 1.0, step + 1)
        losses.append(ref.mean_loss)
    debug = tmp_path_factory.mktemp("debug") / "wide_debug_state.bin"
    write_debug_state(str(debug), x, y, logits, loss0, grads, losses)
    return debug, val


@pytest.mark.parametrize("precision,flags", [("fp32", []), ("bf16", []), ("fp32", ["-r", "0", "-ge", "1"]),
                                             ("fp32", ["--matmul", "fp16fc"]),
                                             ("bf16", ["-r", "2", "-ge", "2"]), ("bf16", ["-w", "0"]),
                                             ("bf16", ["--attention", "llmc"])])
def test_gpt2cu_program_on_fake_gpu(emulated, wide_debug_state, wide_model, tmp_path, monkeypatch, capsys, precision,
                                    flags):
    """test_gpt2cu.py --device cuda on a debug state written from the CPU path: with the emulation the GPU path
    must print `overall okay: 1` under the precision's tolerances (and its bit-exact reload check)."""
    debug, val = wide_debug_state
    monkeypatch.chdir(tmp_path)
    program = load_program("test_gpt2cu_under_test", "test_gpt2cu.py")
    status = program.main(["-e", str(wide_model), "--debug-state", str(debug), "--precision", precision,
                           "-j", str(val)] + flags)
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == "overall okay: 1", out[-4000:]
    assert status == 0 and out.count("TENSOR OK") == 16
    cudnn = precision == "bf16" and "llmc" not in flags  # --attention auto takes cuDNN for bf16
    assert f"attention: {'cuDNN flash attention' if cudnn else 'llm.c'}" in out
    assert "OK (reload determinism over 10 steps)" in out


@pytest.mark.parametrize("reference", ["rose", "fell"])
def test_gpt2cu_bf16_judges_no_overshoot_step(emulated, wide_debug_state, wide_model, tmp_path, monkeypatch, capsys,
                                              reference):
    """bf16 from random init: a step whose reference loss rose over the step before is shown, not judged (its
    overshoot is bf16 rounding's to size); a step whose reference loss fell is judged at 0.05 as ever, and fp32
    judges every step. The reference loss of step 6 is moved far from what the run gives, up or down."""
    from llmc_py.checkpoint import read_debug_state
    debug, val = wide_debug_state
    state = read_debug_state(str(debug), WIDE)
    program = load_program("test_gpt2cu_overshoot", "test_gpt2cu.py")
    assert not program.overshoot_steps(state.losses)
    losses = list(state.losses)
    if reference == "rose":
        losses[5] = losses[4] + 0.5
    else:  # steps 6-10 lower by 0.3: every step still falls
        losses[5:] = [loss - 0.3 for loss in losses[5:]]
    assert program.overshoot_steps(losses) == ({5} if reference == "rose" else set())
    moved = tmp_path / "moved_debug_state.bin"
    write_debug_state(str(moved), state.x, state.y, state.logits, state.loss, state.grads, losses)
    monkeypatch.chdir(tmp_path)
    args = ["-e", str(wide_model), "--debug-state", str(moved), "-j", str(val)]
    status = program.main(args + ["--precision", "bf16"])
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == f"overall okay: {int(reference == 'rose')}", out[-4000:]
    assert status == (0 if reference == "rose" else 1)
    if reference == "rose":
        assert "the loss of step 6 is shown, not judged" in out and "loss not judged at step 6:" in out
        assert "LOSS MISMATCH" not in out
        assert program.main(args + ["--device", "cpu"]) == 1
        assert "LOSS MISMATCH AT STEP 6:" in capsys.readouterr().out
    else:
        assert "not judged" not in out and "LOSS MISMATCH AT STEP 6:" in out


def test_profile_and_bench_on_fake_gpu(fake, wide_model, d12_dir, tmp_path, monkeypatch, capsys):
    profile = load_program("profile_under_test", "profile_gpt2cu.py")
    monkeypatch.setattr(sys, "argv", ["profile_gpt2cu.py", "-e", str(wide_model), "-b", "2", "-t", "16"])
    profile.main()
    out = capsys.readouterr().out
    assert "NVIDIA H100 80GB HBM3, bf16" in out
    groups = dict(re.findall(r"^  (encoder|forward|classifier|backward|optimizer) +([\d.]+) ms", out, re.M))
    assert list(groups) == ["encoder", "forward", "classifier", "backward", "optimizer"]
    bench = load_program("bench_under_test", "dev/bench.py")
    monkeypatch.setattr(sys, "argv", ["bench.py", "--device", "cuda", "-e", str(wide_model), "-b", "2", "-t", "16",
                                      "--steps", "2", "--precision", "fp32", "--matmul", "custom"])
    bench.main()
    out = capsys.readouterr().out
    assert re.search(r"median of 2 steps: 1\.0 ms/step \| 32000 tok/s \| \d+\.\d% bf16 MFU", out), out
    # on tinyshakespeare with a warm-up window and the JSON form dev/bench_peers.py reads
    shard = d12_dir / "dev" / "data" / "tinyshakespeare" / "tiny_shakespeare_train.bin"
    result_path = tmp_path / "bench.json"
    forwards = sum(k == "encoder_forward_kernel" for k, *_ in fake.launches)
    monkeypatch.setattr(sys, "argv", ["bench.py", "--device", "cuda", "-e", str(wide_model), "-b", "2", "-t", "16",
                                      "-i", str(shard), "--warmup", "3", "--steps", "4", "--json", str(result_path)])
    bench.main()
    assert "median of 4 steps: 1.0 ms/step | 32000 tok/s" in capsys.readouterr().out
    assert sum(k == "encoder_forward_kernel" for k, *_ in fake.launches) - forwards == 7
    result = json.loads(result_path.read_text())
    assert result["program"] == "llmc-py" and result["device"] == "NVIDIA H100 80GB HBM3"
    assert (result["B"], result["T"], result["steps"], result["step_ms"]) == (2, 16, 4, [1.0] * 4)
    assert result["median_ms"] == 1.0 and result["tok_per_s"] == 32000.0
    assert result["memory_mib"] == 10 << 10  # the fake's memGetInfo: 70 of 80 GiB free
    assert result["details"]["data"] == str(shard) and result["details"]["warmup"] == 3


def test_event_checker_catches_mistakes(fake):
    """CUDA events on the fake: an elapsed time needs both events recorded on one stream, in order, and the end
    one completed (a host synchronization after it), as cudaEventElapsedTime does."""
    import cupy
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    end.record()
    with pytest.raises(AssertionError, match="before the end event completed"):
        cupy.cuda.get_elapsed_time(start, end)
    end.synchronize()
    assert cupy.cuda.get_elapsed_time(start, end) == 1.0
    with pytest.raises(AssertionError, match="recorded before the start event"):
        cupy.cuda.get_elapsed_time(end, start)
    other = cupy.cuda.Stream(non_blocking=True)
    late = cupy.cuda.Event()
    late.record(other)
    cupy.cuda.Device().synchronize()
    with pytest.raises(AssertionError, match="events of two streams"):
        cupy.cuda.get_elapsed_time(start, late)


@pytest.mark.parametrize("precision, r, ge, f", [("bf16", 1, 0, 1), ("bf16", 0, 2, 1), ("fp32", 2, 1, 1),
                                                 ("fp32", 1, 0, 0)])
def test_profile_groups_every_op_on_fake_gpu(fake, wide_model, monkeypatch, capsys, precision, r, ge, f):
    """Every op call of the profiled step lands in its group: the fake's CUDA events say 1 ms per call, so each
    group's ms is its number of calls, counted here from gpt2.py's step for L=2 layers; fp32 uses TF32 as training
    does unless -f 0."""
    profile = load_program("profile_under_test", "profile_gpt2cu.py")
    monkeypatch.setattr(sys, "argv", ["profile_gpt2cu.py", "-e", str(wide_model), "-b", "2", "-t", "16", "--precision",
                                      precision, "-r", str(r), "-ge", str(ge), "-f", str(f)])
    profile.main()
    out = capsys.readouterr().out
    L = WIDE.num_layers
    per_layer_forward = 4 + 1 + 2 + (ge == 0)             # matmuls, attention, two residual+layernorms, GELU
    per_layer_backward = 4 + 2 + 1 + (r >= 1) + 2 * (r >= 2)  # matmuls, layernorms, attention, recomputation
    expected = {"encoder": 2, "forward": 1 + L * per_layer_forward - 1, "classifier": 5,
                "backward": L * per_layer_backward + 1, "optimizer": 1 + 16}  # + the loss sum; norm + 16 AdamW calls
    groups = {g: float(ms) for g, ms in re.findall(r"^  (\w+) +([\d.]+) ms \( *[\d.]+%\)", out, re.M)}
    assert groups == {g: float(n) for g, n in expected.items()}, out
    total = sum(expected.values())
    assert f"a training step takes {total:.3f} ms in its ops (1.000 ms for the whole step" in out
    tf32 = precision == "fp32" and f == 1
    assert ("(TF32 matmuls)" in out) == tf32 and list(fake.math_mode.values())[-1] == (3 if tf32 else 0)


def test_matmul_variants_on_fake_gpu(fake, wide_model, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    script = load_program("matmul_variants_under_test", "dev/cuda/matmul_variants.py")
    png = tmp_path / "variants.png"
    monkeypatch.setattr(sys, "argv", ["matmul_variants.py", "-e", str(wide_model), "-b", "2", "-t", "16",
                                      "--steps", "2", "-o", str(png)])
    script.main()
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[2:5]] == ["cublas", "custom", "fp16fc"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {name.split("(")[0] for name, _ in fake.blas_calls} >= {"sgemm", "gemm_ex"}
    assert "matmul_forward_kernel" in {k for k, *_ in fake.launches}
