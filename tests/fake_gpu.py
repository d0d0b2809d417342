"""A fake GPU for CPU-only tests: stand-ins for `cupy` and for nvmath's `cublas` / `cublasLt` bindings that run
llmc_py's whole CUDA code path on NumPy memory.

What it checks, on every call the GPU path makes:
- kernel launches against the `extern "C" __global__` signatures parsed from the kernels_cu source that
  llmc_py.cuda hands to cupy.RawModule: argument count, the exact numpy scalar type of every scalar parameter
  (int -> int32, size_t -> uint64, ptrdiff_t -> int64, float -> float32, unsigned -> uint32), and for every
  pointer a C-contiguous fake device array of the pointee's dtype (floatX = uint16 for bf16, float32 for fp32),
  16-byte aligned (128-bit loads), never a host array; a null pointer (np.uint64(0)) only where the kernel
  accepts one. Grid and block within CUDA's limits, block equal to the kernel's __launch_bounds__ (the kernels
  index shared memory with those constants), dynamic shared memory within 48 KiB, and per kernel that the grid
  covers the work and every buffer is big enough for what the kernel touches (RULES below).
- every call into CuPy, nvmath's cublas / cublasLt bindings and CuPy's NCCL against the installed library's own
  signature (read with inspect, or off the signature line Cython writes into docstrings and binaries): the
  arguments must bind to its parameters, and C-typed ones must convert as Cython would convert them (an int in
  range, never a float; bytes, tuple). Enums, attribute value types and the heuristic-result layout are the
  installed nvmath-python's own objects, so a name or value the real library lacks fails here too.
- cuBLAS / cuBLASLt calls at the level of raw pointers: every matrix footprint (rows, cols, ld) must lie inside
  one device allocation, op(A) op(B) dimensions must agree with m, n, k, the layouts, epilogue pointers and
  leading dimensions must fit, the stream must be the current CuPy stream and the workspace ours (cublasSetStream
  drops it, as the real one does), and a cuBLASLt algorithm runs only on pointers as aligned as its preference's
  MIN_ALIGNMENT_*_BYTES said (cuBLASLt's default: 256).
- NCCL at world size 1 (the identity) on device memory and the current stream; memory hooks
  (cupy.cuda.memory_hook) see every allocation, as CuPy's pool reports them.
tests/fake_cudnn.py adds cuDNN (the real frontend's graphs and validation, a checked execute) where it is installed.
With emulate=True it also computes: each kernel by NumPy (the llmc_py references where they exist, rounding to
bf16 where the kernel stores floatX; stochastic rounding becomes round-to-nearest) and each GEMM from the raw
pointers in column-major, so the GPU orchestration can be compared with the CPU path number for number.

CUDA graphs, modeled on CuPy 14's API: `Stream.begin_capture()` / `end_capture()` -> `Graph`, `Graph.upload()` /
`launch()`. Device work (kernel launches, cuBLAS/cuBLASLt GEMMs, NCCL collectives, memsets, `fill`, async copies)
goes through `FakeGPU.enqueue`: it runs at once, or while a capture is open it is recorded (and not run, as CUDA
records without running) with the arguments frozen as the call made them; `Graph.launch()` runs the recording
again. So a per-step value passed by value into a captured launch stays at its capture-time value on every replay,
and a replayed run diverges from an eager one. Inside a capture these fail with CaptureError: allocating (device
or pinned), synchronizing (stream, event, device), reading back (`.get()`, indexing a scalar out, `float()`),
a blocking `.set()`, loading a module, work on a stream other than the capturing one, and a library call that
cannot be captured. Library calls are classified in LIBRARY_CALLS ("work": enqueues capturable device work;
"host": host-side state only; "setup": allocates or synchronizes, never inside a capture); a fake library
function is registered with `gpu.library(name, fn)`, and a new library (say cuDNN's execute) declares its calls
by adding them to LIBRARY_CALLS and enqueueing its computation with `gpu.enqueue`.
Install with `install(monkeypatch, emulate=...)`, which puts the modules into sys.modules for one test; the real
CuPy and nvmath-python (both import without a GPU) are imported first and kept as the reference.
"""
import ast
import ctypes
import functools
import importlib
import importlib.util
import inspect
import math
import operator
import re
import sys
import types
from pathlib import Path

import ml_dtypes
import numpy as np

KERNELS_DIR = Path(__file__).resolve().parent.parent / "kernels_cu"
BF16 = np.dtype(ml_dtypes.bfloat16)
SMEM_LIMIT = 48 << 10

# ----------------------------------------------------------------------------
# the real libraries' API: every call into a fake is first checked against the installed library's signature


# C parameter types of the Cython bindings and the Python integers they take
C_INTEGER_RANGES = {"int": (-2 ** 31, 2 ** 31), "unsigned int": (0, 2 ** 32), "int64_t": (-2 ** 63, 2 ** 63),
                    "long long": (-2 ** 63, 2 ** 63), "intptr_t": (-2 ** 63, 2 ** 63), "size_t": (0, 2 ** 64),
                    "uint64_t": (0, 2 ** 64)}
PYTHON_TYPES = {"bytes": bytes, "str": str, "tuple": tuple, "list": list, "dict": dict}
SIGNATURE_LINE_RE = re.compile(r"^\s*([A-Za-z_][\w.]*)\((.*)\)\s*(?:->\s*\w+)?\s*$")
# CuPy 14's RawModule compile when cuda-pathfinder finds no CUDA runtime headers (cupy/_core/core.pyx,
# assemble_cupy_compiler_options: raised before NVRTC runs; Cython stores it compressed in the binary)
CUPY_HEADERS_MISSING = ("Failed to find CUDA headers. Please install CUDA toolkit headers (e.g., pip install "
                        "cupy-cuda12x[ctk]) or specify CUDA_PATH environment variable.")
# nccl.h's values of the constants cupy.cuda.nccl exports (CuPy exposes none of them without libnccl)
NCCL_H_VALUES = {"NCCL_SUM": 0, "NCCL_PROD": 1, "NCCL_MAX": 2, "NCCL_MIN": 3, "NCCL_AVG": 4,
                 "NCCL_INT8": 0, "NCCL_CHAR": 0, "NCCL_UINT8": 1, "NCCL_INT32": 2, "NCCL_INT": 2,
                 "NCCL_UINT32": 3, "NCCL_INT64": 4, "NCCL_UINT64": 5, "NCCL_FLOAT16": 6, "NCCL_HALF": 6,
                 "NCCL_FLOAT32": 7, "NCCL_FLOAT": 7, "NCCL_FLOAT64": 8, "NCCL_DOUBLE": 8, "NCCL_BFLOAT16": 9}
NCCL_DTYPES = {"NCCL_FLOAT32": np.float32, "NCCL_BFLOAT16": np.uint16, "NCCL_FLOAT16": np.float16,
               "NCCL_INT32": np.int32}


def _split_params(text):
    """The comma-separated items of a parameter list; commas inside brackets or quotes stay."""
    items, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _literal(text):
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def parse_signature_line(line):
    """(name, inspect.Signature, {parameter: C type}) of a signature line as Cython writes it at the top of a
    docstring, e.g. 'gemm_ex(intptr_t handle, int transa, ...) -> intptr_t' or
    "RawModule(str code=None, *, tuple options=(), ...)"; None for any other line."""
    match = SIGNATURE_LINE_RE.match(line)
    if match is None:
        return None
    P = inspect.Parameter
    params, ctypes_, kind = [], {}, P.POSITIONAL_OR_KEYWORD
    for item in _split_params(match[2]):
        decl, eq, default = item.partition("=")
        words = decl.split()
        if not words or not re.fullmatch(r"\*{0,2}\w+|\*", words[-1]):
            return None
        name = words[-1]
        if name == "*":
            kind = P.KEYWORD_ONLY
        elif name.startswith("**"):
            params.append(P(name[2:], P.VAR_KEYWORD))
        elif name.startswith("*"):
            params.append(P(name[1:], P.VAR_POSITIONAL))
            kind = P.KEYWORD_ONLY
        else:
            params.append(P(name, kind, default=_literal(default) if eq else P.empty))
            if len(words) > 1:
                ctypes_[name] = " ".join(words[:-1])
    return match[1], inspect.Signature(params), ctypes_


class Api:
    """A real callable's parameters (names, kinds, defaults) and the C types of its typed ones."""

    def __init__(self, where, signature, ctypes_):
        self.where, self.signature, self.ctypes = where, signature, ctypes_

    def check(self, args, kwargs):
        """Asserts that the real callable would accept these arguments: they bind to its parameters, and every
        C-typed one converts (an integer in range, not a float; bytes for bytes, a tuple for tuple...)."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise AssertionError(f"{self.where}{self.signature}: {e}") from None
        for name, value in bound.arguments.items():
            ctype = self.ctypes.get(name)
            if ctype in C_INTEGER_RANGES:
                try:
                    number = operator.index(value)
                except TypeError:
                    raise AssertionError(f"{self.where}: {name} is a C {ctype}, got {type(value).__name__} "
                                         f"{value!r}") from None
                low, high = C_INTEGER_RANGES[ctype]
                assert low <= number < high, f"{self.where}: {name} = {number} does not fit a C {ctype}"
            elif ctype in PYTHON_TYPES:
                assert value is None or isinstance(value, PYTHON_TYPES[ctype]), \
                    f"{self.where}: {name} must be {ctype}, got {type(value).__name__}"
        return bound


def api_of(obj, where):
    """The Api of a real function, method or class: the signature line Cython puts at the top of its docstring
    (with C types), else inspect's signature."""
    lines = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    parsed = parse_signature_line(lines[0]) if lines else None
    if parsed is not None and parsed[0].split(".")[-1] == getattr(obj, "__name__", None):
        return Api(where, parsed[1], parsed[2])
    return Api(where, inspect.signature(obj), {})


def _nccl_api():
    """({name: Api} of NcclCommunicator (constructor and methods) and cupy.cuda.nccl's functions, {constant:
    value}), read off the installed CuPy's NCCL extension. Without libnccl CuPy's nccl module exposes nothing but
    `available`, so the signature lines Cython embeds in the extension file are read from the file itself."""
    spec = importlib.util.find_spec("cupy_backends.cuda.libs.nccl")
    assert spec is not None and spec.origin, "CuPy's NCCL extension (cupy_backends.cuda.libs.nccl) is not installed"
    data = Path(spec.origin).read_bytes()
    apis = {}
    for chunk in re.split(rb"[\x00\n]", data):
        if not re.match(rb"\s*(NcclCommunicator\b|[a-z_A-Z]\w*\()", chunk):
            continue
        parsed = parse_signature_line(chunk.decode("latin-1"))
        if parsed is not None:
            apis.setdefault(parsed[0], Api(f"nccl.{parsed[0]}", parsed[1], parsed[2]))
    names = {m.decode() for m in re.findall(rb"(?<![\w])NCCL_[A-Z0-9_]+\b", data)}
    assert "NcclCommunicator" in apis and names, f"{spec.origin}: no NCCL signatures found"
    import cupy.cuda.nccl as real_nccl
    constants = {name: getattr(real_nccl, name, NCCL_H_VALUES.get(name)) for name in names}
    return apis, {name: value for name, value in constants.items() if value is not None}


@functools.lru_cache(maxsize=None)
def real_libraries():
    """The installed CuPy, nvmath-python bindings and CuPy's NCCL API that the fakes stand in for, imported once,
    before any fake is installed (CuPy imports without a GPU; it warns when libnccl is missing)."""
    import warnings
    assert not isinstance(sys.modules.get("cupy"), _FakeModule), "real_libraries() while a fake is installed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import cupy
        import cupy.cuda.memory_hook  # noqa: F401
        import cupy.cuda.nccl  # noqa: F401
    from llmc_py.blas import _import_bindings
    cublas, lt = _import_bindings()
    nccl_apis, nccl_constants = _nccl_api()
    return types.SimpleNamespace(cupy=cupy, cublas=cublas, lt=lt, nccl_apis=nccl_apis,
                                 nccl_constants=nccl_constants,
                                 data_type=importlib.import_module("nvmath._utils").CudaDataType)


@functools.lru_cache(maxsize=None)
def real_api(path):
    """The Api of a real callable by path: 'cupy.ndarray.get', 'cublas.sgemm', 'cublasLt.matmul',
    'nccl.NcclCommunicator.allReduce'. A path the installed library lacks fails here."""
    lib = real_libraries()
    root, _, rest = path.partition(".")
    if root == "nccl":
        assert rest in lib.nccl_apis, f"the installed CuPy's NCCL has no {rest}"
        return lib.nccl_apis[rest]
    obj = {"cupy": lib.cupy, "cublas": lib.cublas, "cublasLt": lib.lt}[root]
    for name in rest.split("."):
        assert hasattr(obj, name), f"the installed library has no {path}"
        obj = getattr(obj, name)
    return api_of(obj, path)


def conforming(path, method=False):
    """Decorator for a fake callable: each call is first checked against the real `path`'s signature (a method
    or constructor of a fake class passes `method=True`: self is not checked against a class signature)."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            api = real_api(path)
            if method and "self" not in api.signature.parameters:
                api.check(args[1:], kwargs)
            else:
                api.check(args, kwargs)
            return fn(*args, **kwargs)
        return call
    return wrap


# the keywords RawKernel.__call__ forwards to Function.__call__ (cupy/cuda/function.pyx in CuPy 14, whose binary
# carries no signature line; RawKernel passes enable_cooperative_groups itself, so that one is not allowed)
FUNCTION_CALL_API = Api("cupy.RawKernel.__call__", *parse_signature_line(
    "__call__(tuple grid, tuple block, args, size_t shared_mem=0, stream=None)")[1:])


class _FakeModule(types.ModuleType):
    """A module of the fake GPU (so real_libraries() can tell it from the real one)."""

# ----------------------------------------------------------------------------
# device memory


class CaptureError(AssertionError):
    """Something a CUDA graph capture does not allow happened inside one."""


_active = None  # the installed FakeGPU (install() sets it for one test)


class _Memory:
    """A device address with CuPy MemoryPointer's asynchronous operations on the current stream."""
    __slots__ = ("ptr",)

    def __init__(self, ptr):
        self.ptr = ptr

    def memset_async(self, value, size, stream=None):
        buf, offset = _active.registry.find(self.ptr, size)
        _active.enqueue("memset", lambda: buf[offset:offset + size].fill(value))

    def copy_from_host_async(self, mem, size, stream=None):
        """From pinned host memory only: CUDA runs an async copy from pageable memory synchronously (and
        refuses it inside a capture)."""
        src = _active.pinned_range(int(mem), size)
        buf, offset = _active.registry.find(self.ptr, size)
        _active.enqueue("copy to device", lambda: np.copyto(buf[offset:offset + size], src))


class DeviceArray(np.ndarray):
    """NumPy memory posing as a cupy.ndarray: `.data.ptr`, `.get()`, `.set()` with CuPy's signatures and rules;
    NumPy functions and ufuncs on it raise (as implicit host conversion does with CuPy), so the GPU path must go
    through kernels, cuBLAS and cupy methods only."""

    def __array_finalize__(self, obj):
        self.registry = getattr(obj, "registry", None)

    @property
    def data(self):
        return _Memory(self.__array_interface__["data"][0])

    @conforming("cupy.ndarray.get")
    def get(self, stream=None, order="C", out=None, blocking=True):
        _readback("get()")
        if out is not None:
            if type(out) is not np.ndarray or out.dtype != self.dtype or out.shape != self.shape:
                raise ValueError(f"get: out must be a numpy.ndarray of {self.dtype} {self.shape}")
        if not self.flags.c_contiguous:  # CuPy first copies a non-contiguous array into a new device array
            self.registry.allocate(self.shape, self.dtype)
        host = np.array(plain(self), copy=True, order="C")
        if out is None:
            return host
        out[...] = host
        return out

    @conforming("cupy.ndarray.set")
    def set(self, arr, stream=None):
        if _active is not None:
            _active.forbid("a blocking set() from host memory")
        if type(arr) is not np.ndarray:
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if arr.dtype != self.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if arr.shape != self.shape:  # CuPy wants the same shape, not just the same size
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        if not self.flags.c_contiguous:
            raise RuntimeError("Cannot set to non-contiguous array")
        plain(self)[...] = arr

    @conforming("cupy.ndarray.reshape")
    def reshape(self, *shape, order="C", copy=None):
        out = super().reshape(*shape, order=order)
        if np.may_share_memory(plain(out), plain(self)):
            return out
        copied = self.registry.allocate(out.shape, out.dtype)  # CuPy copies into a new device array, as NumPy does
        plain(copied)[...] = plain(out)
        return copied

    def fill(self, value):
        """CuPy's fill launches a kernel on the current stream."""
        target = self.view(np.ndarray)
        _active.enqueue("fill", lambda: target.fill(value))

    def __getitem__(self, key):
        out = super().__getitem__(key)
        if not isinstance(out, np.ndarray):  # CuPy gives a 0-d device array; turning it into a number reads back
            _readback("indexing a scalar out")
        return out

    def __float__(self):
        _readback("float()")
        return float(self.view(np.ndarray).reshape(-1)[0])

    def __int__(self):
        _readback("int()")
        return int(self.view(np.ndarray).reshape(-1)[0])

    def item(self, *args):
        _readback("item()")
        return self.view(np.ndarray).item(*args)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raise TypeError(f"numpy ufunc {ufunc.__name__} applied to a device array")

    def __array_function__(self, func, types_, args, kwargs):
        raise TypeError(f"numpy function {func.__name__} applied to a device array")

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion of a device array to a NumPy array is not allowed")

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, ptr={self.data.ptr:#x})"

    __str__ = __repr__

    def __bool__(self):
        raise TypeError("truth value of a device array")


def plain(a):
    """The NumPy array behind a DeviceArray (a view, same memory)."""
    return a.view(np.ndarray)


def _readback(what):
    if _active is not None:
        _active.forbid(f"reading back to the host ({what})")
        _active.readbacks.append(what)


class Registry:
    """Every fake device allocation: (start address, nbytes, backing uint8 array); each one is reported to the
    registered memory hooks as CuPy's pool reports a malloc (cupy.cuda.memory_hook)."""

    def __init__(self):
        self.allocations = []
        self.hooks = []

    def allocate(self, shape, dtype):
        if _active is not None:
            _active.forbid("a device allocation")
        dtype = np.dtype(dtype)
        shape = (shape,) if np.isscalar(shape) else tuple(shape)
        nbytes = math.prod(shape) * dtype.itemsize
        mem_size = -(-nbytes // 512) * 512  # CuPy's pool rounds up to 512 bytes
        for hook in self.hooks:
            hook.malloc_preprocess(device_id=0, size=nbytes, mem_size=mem_size)
        raw = np.zeros(nbytes + 512, dtype=np.uint8)
        skip = (-raw.ctypes.data) % 256  # cudaMalloc returns 256-byte aligned memory
        buf = raw[skip:skip + nbytes]
        self.allocations.append((buf.ctypes.data, nbytes, buf))
        for hook in self.hooks:
            hook.malloc_postprocess(device_id=0, size=nbytes, mem_size=mem_size, mem_ptr=buf.ctypes.data,
                                    pmem_id=id(buf))
        array = buf.view(dtype).reshape(shape).view(DeviceArray)
        array.registry = self
        return array

    def find(self, ptr, nbytes):
        for start, size, buf in self.allocations:
            if start <= ptr and ptr + nbytes <= start + size:
                return buf, ptr - start
        raise AssertionError(f"device memory [{ptr:#x}, +{nbytes}) is not inside one device allocation")

    def matrix(self, ptr, dtype, rows, cols, ld, batch=1, stride=0):
        """Column-major (rows x cols) matrices at ptr, leading dimension ld, `batch` of them `stride` elements
        apart: a strided view (batch, rows, cols) of the device memory."""
        dtype = np.dtype(dtype)
        assert rows >= 1 and cols >= 1 and batch >= 1, f"matrix dims {rows}x{cols} x{batch}"
        assert ld >= rows, f"leading dimension {ld} < rows {rows}"
        assert ptr % dtype.itemsize == 0, f"pointer {ptr:#x} not aligned to {dtype}"
        extent = ((batch - 1) * stride + (cols - 1) * ld + rows) * dtype.itemsize
        buf, offset = self.find(ptr, extent)
        its = dtype.itemsize
        return np.ndarray((batch, rows, cols), dtype=dtype, buffer=buf, offset=offset,
                          strides=(stride * its, its, ld * its))


# ----------------------------------------------------------------------------
# floatX values


def to_f32(a):
    """float32 values of a device array (bf16 bits widened)."""
    a = plain(a) if isinstance(a, DeviceArray) else a
    if a.dtype == np.uint16:
        return a.view(BF16).astype(np.float32)
    return a.astype(np.float32)


def store(a, values):
    """Writes float32 values into a device array, rounding to nearest even for bf16 storage."""
    dst = plain(a)
    values = np.asarray(values, dtype=np.float32).reshape(dst.shape)
    if dst.dtype == np.uint16:
        dst[...] = values.astype(BF16).view(np.uint16)
    else:
        dst[...] = values


def flat(a, n=None):
    """The first n elements of a device array, flat (a view)."""
    f = plain(a).reshape(-1)
    return f if n is None else f[:n]

# ----------------------------------------------------------------------------
# kernel signatures


KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\(([^)]*)\)\s*)?(\w+)\s*\(([^)]*)\)',
                       re.S)
DEFINE_RE = re.compile(r"^#define\s+(\w+)\s+(\d+)\b", re.M)
SCALAR_TYPES = {"int": np.int32, "unsigned int": np.uint32, "unsigned": np.uint32, "size_t": np.uint64,
                "ptrdiff_t": np.int64, "float": np.float32}
POINTEE_TYPES = {"float": np.float32, "int": np.int32, "int4": np.int32, "unsigned short": np.uint16,
                 "unsigned int": np.uint32}


def parse_kernels(source):
    """{kernel name: {"params": [(name, kind, type)], "bound": int or None}} of every extern "C" __global__
    function; kind is "ptr" or "scalar", type the C base type ("floatX" kept symbolic)."""
    defines = {name: int(value) for name, value in DEFINE_RE.findall(source)}
    kernels = {}
    for bound, name, params in KERNEL_RE.findall(source):
        parsed = []
        for param in params.split(","):
            words = param.replace("__restrict__", " ").replace("const", " ").replace("*", " * ").split()
            assert len(words) >= 2, f"{name}: cannot parse parameter {param!r}"
            pname = words[-1]
            kind = "ptr" if "*" in words else "scalar"
            ctype = " ".join(w for w in words[:-1] if w != "*")
            parsed.append((pname, kind, ctype))
        value = None
        if bound:
            first = bound.split(",")[0].strip()
            value = int(first) if first.isdigit() else defines[first]
        kernels[name] = {"params": parsed, "bound": value}
    return kernels


def kernel_sources():
    """{file stem: source} of kernels_cu/*.cu."""
    return {p.stem: p.read_text() for p in sorted(KERNELS_DIR.glob("*.cu"))}

# ----------------------------------------------------------------------------
# per-kernel rules: the grid covers the work, the buffers hold what the kernel touches


def _c(n, d):
    return -(-n // d)


def _size(a):
    return a.size if isinstance(a, DeviceArray) else 0


def _rules(name, a, grid, block, shared, X, itemsize):
    """Assertions about one launch of kernel `name`; `a` maps parameter names to arguments."""
    gx, gy = grid[0], grid[1] if len(grid) > 1 else 1
    bx = block[0]
    if name == "encoder_forward_kernel":
        B, T, C = int(a["B"]), int(a["T"]), int(a["C"])
        assert C % X == 0 and gx * bx * X >= B * T * C, "the grid does not cover B*T*C"
        assert _size(a["out"]) >= B * T * C, "out is smaller than B*T*C"
        assert _size(a["inp"]) >= B * T and _size(a["wpe"]) >= T * C and _size(a["wte"]) % C == 0
    elif name == "wpe_backward_kernel":
        B, T, C = int(a["B"]), int(a["T"]), int(a["C"])
        assert gx * bx * X >= T * C and _size(a["dwpe"]) >= T * C and _size(a["dout"]) >= B * T * C
        assert _size(a["seed"]) >= 1
    elif name == "wte_backward_kernel":
        C = int(a["C"])
        assert gy * 32 * X >= C and _size(a["bucket_info"]) == 4 * gx, "one bucket_info row per block row"
        rows = flat(a["bucket_info"]).reshape(-1, 4)
        nb = int(np.count_nonzero(rows[:, 1]))
        info = rows[:nb]
        assert nb > 0 and not rows[nb:].any(), "the buckets first, then all-zero rows"
        assert (info[:, 1] > 0).all() and (np.diff(info[:, 1]) <= 0).all(), "buckets sorted by size, descending"
        total = int(info[:, 1].sum())
        assert total <= _size(a["workload"]), "the buckets cover more positions than the workload holds"
        by_start = info[np.argsort(info[:, 0])]
        assert by_start[0, 0] == 0 and (by_start[1:, 0] == by_start[:-1, 0] + by_start[:-1, 1]).all(), \
            "the buckets split workload[:total] into consecutive runs"
        assert len(np.unique(info[:, 2])) == len(info), "one bucket per token"
        assert _size(a["dwte"]) >= (int(info[:, 2].max()) + 1) * C
        assert _size(a["dout"]) >= (int(flat(a["workload"])[:total].max()) + 1) * C and _size(a["seed"]) >= 1
    elif name in ("layernorm_forward_kernel", "fused_residual_forward_kernel"):
        N, C = int(a["N"]), int(a["C"])
        warps = bx // 32
        assert bx % 32 == 0 and gx * warps >= N and C % X == 0
        assert shared == warps * C * itemsize, f"shared memory {shared} for {warps} rows of {C}"
        rows = ("out", "inp") if name == "layernorm_forward_kernel" else ("residual", "normed", "inp1", "inp2")
        for key in rows:
            assert _size(a[key]) >= N * C, f"{key}: {_size(a[key])} < N*C"
        for key in ("mean", "rstd"):
            assert a[key] is None or _size(a[key]) >= N
        assert _size(a["weight"]) == C and _size(a["bias"]) == C
    elif name == "layernorm_backward_kernel":
        N, C = int(a["N"]), int(a["C"])
        R = max(1, bx // (C // X))
        assert C % X == 0 and shared >= 2 * R * C * 4
        assert _size(a["scratch"]) >= gx * 2 * C
        for key in ("dinp", "dout", "inp"):
            assert _size(a[key]) >= N * C
        assert _size(a["mean"]) >= N and _size(a["rstd"]) >= N and _size(a["weight"]) == C
    elif name == "layernorm_backward_reduce_kernel":
        C, G = int(a["C"]), int(a["num_blocks"])
        assert gx * bx >= C and _size(a["scratch"]) >= G * 2 * C
        assert _size(a["dweight"]) == C and _size(a["dbias"]) == C
    elif name in ("permute_kernel", "permute_backward_kernel", "unpermute_kernel", "unpermute_backward_kernel"):
        n = int(a["B"]) * int(a["NH"]) * int(a["T"]) * int(a["HS"])
        assert int(a["HS"]) % X == 0 and gx * bx * X >= n
        for key, value in a.items():
            if isinstance(value, DeviceArray):
                assert _size(value) >= (3 * n if key in ("inp", "dinp") else n), f"{key} too small"
    elif name in ("softmax_forward_kernel", "softmax_backward_kernel"):
        rows, T = int(a["BNH"]) * int(a["T"]), int(a["T"])
        assert gx * (bx // 32) >= rows
        for key, value in a.items():
            if isinstance(value, DeviceArray):
                assert _size(value) >= rows * T, f"{key} too small"
    elif name in ("gelu_forward_kernel", "gelu_backward_inplace_kernel"):
        N = int(a["N"])
        assert N % X == 0 and gx * bx * X >= N
        for key, value in a.items():
            if isinstance(value, DeviceArray):
                assert _size(value) >= N
    elif name == "matmul_backward_bias_kernel":
        N, OC = int(a["N"]), int(a["OC"])
        assert OC % X == 0 and gx * 32 * X >= OC and _size(a["partials"]) >= gy * OC and _size(a["dout"]) >= N * OC
    elif name == "matmul_backward_bias_reduce_kernel":
        OC = int(a["OC"])
        assert gx * bx >= OC and _size(a["partials"]) >= int(a["num_rows"]) * OC and _size(a["dbias"]) == OC
    elif name == "add_bias_kernel":
        N, OC = int(a["N"]), int(a["OC"])
        assert OC % X == 0 and gx * bx * X >= N * OC and _size(a["out"]) >= N * OC and _size(a["bias"]) == OC
    elif name == "matmul_forward_kernel":
        N, C, OC = int(a["N"]), int(a["C"]), int(a["OC"])
        assert gx * 128 >= OC and gy * 128 >= N
        assert _size(a["out"]) >= N * OC and _size(a["inp"]) >= N * C and _size(a["weight"]) == OC * C
        assert a["bias"] is None or _size(a["bias"]) == OC
    elif name == "fused_classifier_kernel":
        BT, V, P = int(a["BT"]), int(a["V"]), int(a["P"])
        assert gx == BT and P % X == 0 and V <= P and _size(a["logits"]) >= BT * P
        assert _size(a["losses"]) >= BT and _size(a["targets"]) >= BT and _size(a["dloss"]) >= 1
        t = flat(a["targets"], BT)
        assert t.min() >= 0 and t.max() < V, "targets in [0, V)"
    elif name in ("adamw_kernel", "init_from_master_kernel"):
        n, ws, ss = int(a["n"]), int(a["w_stride"]), int(a["s_stride"])
        assert gx * bx >= n and n < 2 ** 31
        if gy > 1:
            assert ws >= n and ss >= n
        w_extent, s_extent = (gy - 1) * ws + n, (gy - 1) * ss + n
        assert _size(a["params"]) >= w_extent and (a["master"] is None or _size(a["master"]) >= s_extent)
        if name == "adamw_kernel":
            assert _size(a["grads"]) >= w_extent and _size(a["m"]) >= s_extent and _size(a["v"]) >= s_extent
            assert _size(a["hyper"]) >= 4 and _size(a["grad_scale"]) >= 1 and _size(a["seed"]) >= 1
            assert int(a["decay"]) in (0, 1)
    elif name == "global_norm_squared_kernel":
        count, stride = int(a["count"]), int(a["stride"])
        assert _size(a["slots"]) >= gx * gy and _size(a["values"]) >= (gy - 1) * stride + count
    elif name == "global_norm_aggregate_kernel":
        assert gx == 1 and _size(a["slots"]) >= int(a["num_slots"]) and _size(a["out"]) >= 1
    elif name == "grad_clip_scale_kernel":
        assert gx == 1 and _size(a["scale"]) >= 1 and _size(a["norm_squared"]) >= 1
    elif name in ("cast_f32_to_floatX_kernel", "cast_floatX_to_f32_kernel"):
        n, ds, ss = int(a["n"]), int(a["dst_stride"]), int(a["src_stride"])
        assert gx * bx >= n and _size(a["dst"]) >= (gy - 1) * ds + n and _size(a["src"]) >= (gy - 1) * ss + n
    elif name == "cast_f32_to_f16_kernel":
        n = int(a["n"])
        assert gx * bx >= n and _size(a["dst"]) >= n and _size(a["src"]) >= n
    else:
        raise AssertionError(f"no launch rule for kernel {name}: add one to tests/fake_gpu.py")


# kernels whose pointers need only element alignment (scalar accesses only) ...
SCALAR_ACCESS = {"adamw_kernel", "init_from_master_kernel", "cast_f32_to_floatX_kernel", "cast_floatX_to_f32_kernel",
                 "cast_f32_to_f16_kernel", "global_norm_squared_kernel", "global_norm_aggregate_kernel",
                 "grad_clip_scale_kernel", "matmul_backward_bias_reduce_kernel", "layernorm_backward_reduce_kernel"}
# ... and the scalar-access parameters of the others (read off the kernel bodies); every other pointer goes
# through Packed128 loads/stores (or is an int4*) and must be 16-byte aligned
SCALAR_PARAMS = {"encoder_forward_kernel": {"inp"}, "wpe_backward_kernel": {"seed"},
                 "wte_backward_kernel": {"workload", "seed"},
                 "layernorm_forward_kernel": {"mean", "rstd"}, "fused_residual_forward_kernel": {"mean", "rstd"},
                 "layernorm_backward_kernel": {"mean", "rstd", "scratch"},
                 "softmax_forward_kernel": {"att", "preatt"}, "softmax_backward_kernel": {"dpreatt", "datt", "att"},
                 "fused_classifier_kernel": {"losses", "dloss", "targets"}, "matmul_forward_kernel": {"out", "bias"}}
# pointer parameters that may be null
NULLABLE = {("layernorm_forward_kernel", "mean"), ("layernorm_forward_kernel", "rstd"),
            ("fused_residual_forward_kernel", "mean"), ("fused_residual_forward_kernel", "rstd"),
            ("adamw_kernel", "master"), ("matmul_forward_kernel", "bias")}

# ----------------------------------------------------------------------------
# kernel emulation (NumPy)


def _ln(x, w, b):
    from llmc_py.layernorm import layernorm_forward
    out = np.empty_like(x)
    mean, rstd = np.empty(x.shape[:-1], np.float32), np.empty(x.shape[:-1], np.float32)
    layernorm_forward(out, mean, rstd, x, w, b)
    return out, mean, rstd


def _emulate(name, a, grid, block):
    from llmc_py.adamw import adamw_update
    from llmc_py.gelu import gelu_backward_inplace, gelu_forward
    gx, gy = grid[0], grid[1] if len(grid) > 1 else 1
    if name == "encoder_forward_kernel":
        B, T, C = int(a["B"]), int(a["T"]), int(a["C"])
        ids = flat(a["inp"], B * T).reshape(B, T)
        wte, wpe = to_f32(a["wte"]).reshape(-1, C), to_f32(a["wpe"]).reshape(-1, C)
        store(flat(a["out"], B * T * C), wte[ids] + wpe[:T])
    elif name == "wpe_backward_kernel":
        B, T, C = int(a["B"]), int(a["T"]), int(a["C"])
        d = to_f32(flat(a["dout"], B * T * C)).reshape(B, T, C).sum(axis=0).reshape(-1)
        dst = flat(a["dwpe"], T * C)
        store(dst, to_f32(dst) + d)
    elif name == "wte_backward_kernel":
        C = int(a["C"])
        info = flat(a["bucket_info"]).reshape(-1, 4)
        work = flat(a["workload"])
        dout = to_f32(a["dout"]).reshape(-1, C)
        dwte = flat(a["dwte"]).reshape(-1, C)
        for start, size, token, _ in info[info[:, 1] > 0]:
            rows = work[start:start + size]
            store(dwte[token], to_f32(dwte[token]) + dout[rows].sum(axis=0))
    elif name == "layernorm_forward_kernel":
        N, C = int(a["N"]), int(a["C"])
        out, mean, rstd = _ln(to_f32(flat(a["inp"], N * C)).reshape(N, C), to_f32(a["weight"]), to_f32(a["bias"]))
        store(flat(a["out"], N * C), out)
        for key, value in (("mean", mean), ("rstd", rstd)):
            if a[key] is not None:
                flat(a[key], N)[...] = value
    elif name == "fused_residual_forward_kernel":
        N, C = int(a["N"]), int(a["C"])
        res = to_f32(flat(a["inp1"], N * C)) + to_f32(flat(a["inp2"], N * C))
        store(flat(a["residual"], N * C), res)
        out, mean, rstd = _ln(to_f32(flat(a["residual"], N * C)).reshape(N, C), to_f32(a["weight"]),
                              to_f32(a["bias"]))  # the residual as stored
        store(flat(a["normed"], N * C), out)
        for key, value in (("mean", mean), ("rstd", rstd)):
            if a[key] is not None:
                flat(a[key], N)[...] = value
    elif name == "layernorm_backward_kernel":
        N, C = int(a["N"]), int(a["C"])
        x, dout = to_f32(flat(a["inp"], N * C)).reshape(N, C), to_f32(flat(a["dout"], N * C)).reshape(N, C)
        w, mean, rstd = to_f32(a["weight"]), flat(a["mean"], N), flat(a["rstd"], N)
        xhat = (x - mean[:, None]) * rstd[:, None]
        dnorm = dout * w
        dx = (dnorm - dnorm.mean(-1, keepdims=True) - xhat * (dnorm * xhat).mean(-1, keepdims=True)) * rstd[:, None]
        dinp = flat(a["dinp"], N * C)
        store(dinp, to_f32(dinp) + dx.reshape(-1))
        rows = _c(N, gx)
        scratch = flat(a["scratch"], gx * 2 * C).reshape(gx, 2, C)
        for g in range(gx):
            r = slice(g * rows, min(N, (g + 1) * rows))
            scratch[g, 0] = dout[r].sum(axis=0)
            scratch[g, 1] = (xhat[r] * dout[r]).sum(axis=0)
    elif name == "layernorm_backward_reduce_kernel":
        C, G = int(a["C"]), int(a["num_blocks"])
        s = flat(a["scratch"], G * 2 * C).reshape(G, 2, C).sum(axis=0)
        store(a["dbias"], to_f32(a["dbias"]) + s[0])
        store(a["dweight"], to_f32(a["dweight"]) + s[1])
    elif name in ("permute_kernel", "permute_backward_kernel", "unpermute_kernel", "unpermute_backward_kernel"):
        B, T, NH, HS = (int(a[k]) for k in ("B", "T", "NH", "HS"))
        n = B * NH * T * HS
        if name == "permute_kernel":
            x = flat(a["inp"], 3 * n).reshape(B, T, 3, NH, HS)
            for i, key in enumerate("qkv"):
                flat(a[key], n).reshape(B, NH, T, HS)[...] = x[:, :, i].transpose(0, 2, 1, 3)
        elif name == "permute_backward_kernel":
            d = flat(a["dinp"], 3 * n).reshape(B, T, 3, NH, HS)
            for i, key in enumerate(("dq", "dk", "dv")):
                d[:, :, i] = flat(a[key], n).reshape(B, NH, T, HS).transpose(0, 2, 1, 3)
        elif name == "unpermute_kernel":
            flat(a["out"], n).reshape(B, T, NH, HS)[...] = flat(a["y"], n).reshape(B, NH, T, HS).transpose(0, 2, 1, 3)
        else:
            flat(a["dy"], n).reshape(B, NH, T, HS)[...] = flat(a["dout"], n).reshape(B, T, NH, HS).transpose(0, 2, 1, 3)
    elif name == "softmax_forward_kernel":
        BNH, T, s = int(a["BNH"]), int(a["T"]), float(a["scale"])
        x = to_f32(flat(a["preatt"], BNH * T * T)).reshape(BNH, T, T).astype(np.float64)
        upper = np.triu(np.ones((T, T), bool), 1)
        x[:, upper] = -np.inf
        e = np.exp(s * (x - x.max(-1, keepdims=True)))
        store(flat(a["att"], BNH * T * T), e / e.sum(-1, keepdims=True))
    elif name == "softmax_backward_kernel":
        BNH, T, s = int(a["BNH"]), int(a["T"]), float(a["scale"])
        att = to_f32(flat(a["att"], BNH * T * T)).reshape(BNH, T, T)
        datt = to_f32(flat(a["datt"], BNH * T * T)).reshape(BNH, T, T)
        d = s * att * (datt - (att * datt).sum(-1, keepdims=True))
        d[:, np.triu(np.ones((T, T), bool), 1)] = 0.0
        store(flat(a["dpreatt"], BNH * T * T), d)
    elif name == "gelu_forward_kernel":
        N = int(a["N"])
        out = np.empty(N, np.float32)
        gelu_forward(out, to_f32(flat(a["inp"], N)))
        store(flat(a["out"], N), out)
    elif name == "gelu_backward_inplace_kernel":
        N = int(a["N"])
        d = to_f32(flat(a["d_in_out"], N))
        gelu_backward_inplace(d, to_f32(flat(a["inp"], N)))
        store(flat(a["d_in_out"], N), d)
    elif name == "matmul_backward_bias_kernel":
        N, OC = int(a["N"]), int(a["OC"])
        d = to_f32(flat(a["dout"], N * OC)).reshape(N, OC)
        block_row = (np.arange(N) // (block[0] // 32)) % gy  # warp w of block row sy sums rows sy*8 + w + k*8*gy
        partials = flat(a["partials"], gy * OC).reshape(gy, OC)
        for sy in range(gy):
            partials[sy] = d[block_row == sy].sum(axis=0)
    elif name == "matmul_backward_bias_reduce_kernel":
        OC, rows = int(a["OC"]), int(a["num_rows"])
        store(a["dbias"], to_f32(a["dbias"]) + flat(a["partials"], rows * OC).reshape(rows, OC).sum(axis=0))
    elif name == "add_bias_kernel":
        N, OC = int(a["N"]), int(a["OC"])
        out = flat(a["out"], N * OC)
        store(out, (to_f32(out).reshape(N, OC) + to_f32(a["bias"])).reshape(-1))
    elif name == "matmul_forward_kernel":
        N, C, OC = int(a["N"]), int(a["C"]), int(a["OC"])
        y = to_f32(flat(a["inp"], N * C)).reshape(N, C) @ to_f32(a["weight"]).reshape(OC, C).T
        if a["bias"] is not None:
            y += to_f32(a["bias"])
        store(flat(a["out"], N * OC), y.reshape(-1))
    elif name == "fused_classifier_kernel":
        from llmc_py.fused_classifier import fused_classifier
        BT, V, P = int(a["BT"]), int(a["V"]), int(a["P"])
        logits = flat(a["logits"], BT * P).reshape(BT, P)
        x = to_f32(logits)
        losses = flat(a["losses"], BT)
        fused_classifier(x, losses, flat(a["dloss"]), flat(a["targets"], BT), V)
        store(logits[:, :V], x[:, :V])
    elif name == "adamw_kernel":
        n, ws, ss = int(a["n"]), int(a["w_stride"]), int(a["s_stride"])
        for y in range(gy):
            w, s = slice(y * ws, y * ws + n), slice(y * ss, y * ss + n)
            params = to_f32(flat(a["params"])[w])
            master = None if a["master"] is None else flat(a["master"])[s]
            adamw_update(params, to_f32(flat(a["grads"])[w]), flat(a["m"])[s], flat(a["v"])[s], master,
                         flat(a["hyper"]), flat(a["grad_scale"]), flat(a["seed"]), a["beta1"], a["beta2"], a["eps"],
                         bool(a["decay"]))
            store(flat(a["params"])[w], params)
    elif name == "init_from_master_kernel":
        n, ws, ss = int(a["n"]), int(a["w_stride"]), int(a["s_stride"])
        for y in range(gy):
            store(flat(a["params"])[y * ws:y * ws + n], flat(a["master"])[y * ss:y * ss + n])
    elif name == "global_norm_squared_kernel":
        count, stride = int(a["count"]), int(a["stride"])
        slots = flat(a["slots"])
        for y in range(gy):
            v = to_f32(flat(a["values"])[y * stride:y * stride + count]).astype(np.float64)
            slots[y * gx] += np.float32(np.dot(v, v))
    elif name == "global_norm_aggregate_kernel":
        flat(a["out"])[0] += flat(a["slots"], int(a["num_slots"])).sum(dtype=np.float32)
    elif name == "grad_clip_scale_kernel":
        from llmc_py.global_norm import grad_clip_scale
        grad_clip_scale(flat(a["scale"]), flat(a["norm_squared"]), a["max_norm"])
    elif name in ("cast_f32_to_floatX_kernel", "cast_floatX_to_f32_kernel"):
        n, ds, ss = int(a["n"]), int(a["dst_stride"]), int(a["src_stride"])
        for y in range(gy):
            store(flat(a["dst"])[y * ds:y * ds + n], to_f32(flat(a["src"])[y * ss:y * ss + n]))
    elif name == "cast_f32_to_f16_kernel":
        n = int(a["n"])
        flat(a["dst"], n)[...] = flat(a["src"], n).astype(np.float16).view(np.uint16)
    else:
        raise AssertionError(f"no emulation for kernel {name}")

# ----------------------------------------------------------------------------
# fake cupy


class FakeGPU:
    """State shared by the fake modules: allocations, launches and BLAS calls recorded, the current stream."""

    def __init__(self, emulate=False, device_name="NVIDIA H100 80GB HBM3", num_sms=132, nccl=True,
                 headers_missing=False):
        self.emulate = emulate
        self.registry = Registry()
        self.launches = []     # (kernel, precision, grid, block), as they run
        self.blas_calls = []   # (function, details), as they run
        self.nccl_calls = []   # (collective, count, datatype, op), as they are issued
        self.modules = {}
        self.device_name, self.num_sms = device_name, num_sms
        self.nccl, self.nccl_uid, self.nccl_group_depth = nccl, bytes(range(128)), 0
        self.headers_missing = headers_missing  # RawModule.compile raises CuPy 14's missing-headers RuntimeError
        self.stream_ptr = 0
        self.syncs = 0         # host synchronizations so far (device, stream or event)
        self.math_mode = {}
        self.driver_version = 12090  # cudaDriverGetVersion: CUDA 12.9
        self.capturing = None  # (stream, [(what, work)]) while a capture is open
        self.captures = []     # the recordings of every capture ended, [(what, work)] each
        self.graph_launches = 0
        self.readbacks = []    # what read device memory back to the host, in order
        self.pinned = []       # (address, host uint8 array) of every pinned host allocation

    # capture --------------------------------------------------------------

    def forbid(self, what):
        """What may not happen inside a capture: raises CaptureError while one is open."""
        if self.capturing is not None:
            raise CaptureError(f"inside a CUDA graph capture: {what}")

    def enqueue(self, what, work):
        """Device work on the current stream: run now, or recorded (not run) while a capture is open."""
        if self.capturing is None:
            work()
            return
        stream, recording = self.capturing
        if self.stream_ptr != stream.ptr:
            raise CaptureError(f"inside a CUDA graph capture on stream {stream.ptr:#x}: {what} issued on stream "
                               f"{self.stream_ptr:#x}, outside the graph")
        recording.append((what, work))

    def library(self, name, fn):
        """fn as the library entry point `name` (classified in LIBRARY_CALLS), refused inside a capture when it
        cannot be captured."""
        kind = LIBRARY_CALLS.get(name)
        assert kind in ("work", "host", "setup"), f"library call {name} is not classified in LIBRARY_CALLS"

        def call(*args, **kwargs):
            if kind == "setup":
                self.forbid(f"{name}, which cannot be captured (it allocates or synchronizes)")
            return fn(*args, **kwargs)
        call.__name__ = fn.__name__
        if hasattr(fn, "__wrapped__"):  # fn is checked against the real API (conforming): so is call
            call.__wrapped__ = fn
        return call

    def pinned_range(self, ptr, nbytes):
        """The host memory [ptr, ptr + nbytes) as a uint8 view, asserting it lies in one pinned allocation."""
        for start, host in self.pinned:
            if start <= ptr and ptr + nbytes <= start + host.nbytes:
                return host[ptr - start:ptr - start + nbytes]
        raise AssertionError(f"host memory [{ptr:#x}, +{nbytes}) of an async copy is not pinned")

    # kernels ------------------------------------------------------------

    def compile(self, code, options):
        precision = "bf16" if "-DENABLE_BF16" in options else "fp32" if "-DENABLE_FP32" in options else None
        assert precision is not None, f"RawModule options carry no precision define: {options}"
        assert any(o.startswith("-I") for o in options), "the include path of common.cuh is missing"
        return precision, parse_kernels(code)

    def launch(self, kernel, precision, sig, grid, block, args, shared_mem):
        where = f"{kernel} ({precision})"
        for dims, what, limits in ((grid, "grid", (2 ** 31 - 1, 65535, 65535)), (block, "block", (1024, 1024, 64))):
            assert isinstance(dims, tuple) and 1 <= len(dims) <= 3, f"{where}: {what} {dims!r} must be a 1-3 tuple"
            for d, limit in zip(dims, limits):
                assert type(d) is int and 1 <= d <= limit, f"{where}: {what} {dims} out of range"
        assert math.prod(block) <= 1024, f"{where}: block {block} has more than 1024 threads"
        if sig["bound"] is not None:
            assert math.prod(block) == sig["bound"], f"{where}: block {block}, the kernel is built for {sig['bound']}"
        else:
            assert math.prod(block) % 32 == 0, f"{where}: block {block} is not whole warps"
        assert type(shared_mem) is int and 0 <= shared_mem <= SMEM_LIMIT, f"{where}: shared memory {shared_mem}"
        params = sig["params"]
        assert isinstance(args, tuple) and len(args) == len(params), \
            f"{where}: {len(args)} arguments for {len(params)} parameters {[p[0] for p in params]}"
        floatx = np.dtype(np.uint16 if precision == "bf16" else np.float32)
        named = {}
        for (pname, kind, ctype), arg in zip(params, args):
            what = f"{where} argument {pname} ({ctype}{'*' if kind == 'ptr' else ''})"
            if kind == "scalar":
                expected = SCALAR_TYPES[ctype]
                assert type(arg) is expected, f"{what}: expected {expected.__name__}, got {type(arg).__name__}"
                named[pname] = arg
                continue
            if type(arg) is np.uint64:
                assert int(arg) == 0, f"{what}: raw pointer values are not used by llmc_py; expected a device array"
                assert (kernel, pname) in NULLABLE, f"{what}: null pointer where the kernel needs memory"
                named[pname] = None
                continue
            assert isinstance(arg, DeviceArray), f"{what}: expected a device array, got {type(arg).__name__}"
            expected = floatx if ctype == "floatX" else np.dtype(POINTEE_TYPES[ctype])
            assert arg.dtype == expected, f"{what}: dtype {arg.dtype}, expected {expected}"
            assert arg.flags.c_contiguous, f"{what}: not C-contiguous (shape {arg.shape}, strides {arg.strides})"
            scalar = kernel in SCALAR_ACCESS or pname in SCALAR_PARAMS.get(kernel, ())
            align = arg.dtype.itemsize if scalar else 16
            assert arg.data.ptr % align == 0, f"{what}: address {arg.data.ptr:#x} not {align}-byte aligned"
            self.registry.find(arg.data.ptr, arg.nbytes)
            named[pname] = arg
        X = 8 if precision == "bf16" else 4

        def run():  # what the kernel does with its (frozen) arguments, each time it runs
            try:
                _rules(kernel, named, grid, block, shared_mem, X, floatx.itemsize)
            except AssertionError as e:
                raise AssertionError(f"{where} grid {grid} block {block} shared {shared_mem}: {e}") from None
            self.launches.append((kernel, precision, grid, block))
            if self.emulate:
                _emulate(kernel, named, grid, block)
        self.enqueue(where, run)

    # modules ------------------------------------------------------------

    def cupy_module(self):
        """The fake `cupy` with the parts llmc_py uses; each callable checks its arguments against the installed
        CuPy's signature first (conforming)."""
        gpu = self
        cupy = _FakeModule("cupy")
        cupy.__version__ = "14.0.0 (fake)"
        cupy.ndarray = DeviceArray
        for name in ("float32", "float16", "float64", "uint16", "int32", "uint32", "int64", "uint64", "uint8"):
            setattr(cupy, name, getattr(np, name))

        @conforming("cupy.empty")
        def empty(shape, dtype=float, order="C"):
            return gpu.registry.allocate(shape, dtype)

        @conforming("cupy.zeros")
        def zeros(shape, dtype=float, order="C"):
            return gpu.registry.allocate(shape, dtype)  # the registry hands out zeroed memory

        @conforming("cupy.asarray")
        def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
            if isinstance(a, DeviceArray):
                return a
            gpu.forbid("a device allocation (asarray of host data)")
            host = np.asarray(a, dtype=dtype)
            out = gpu.registry.allocate(host.shape, host.dtype)
            plain(out)[...] = host
            return out

        @conforming("cupy.asnumpy")
        def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
            return a.get() if isinstance(a, DeviceArray) else np.asarray(a)

        cupy.empty, cupy.zeros, cupy.asarray, cupy.asnumpy = empty, zeros, asarray, asnumpy

        class RawKernel:
            def __init__(self, name, precision, sig):
                self.name, self.precision, self.sig = name, precision, sig

            @conforming("cupy.RawKernel.__call__")
            def __call__(self, grid, block, args, **kwargs):
                shared_mem = FUNCTION_CALL_API.check((grid, block, args), kwargs).arguments.get("shared_mem", 0)
                gpu.launch(self.name, self.precision, self.sig, grid, block, args, shared_mem)

        class RawModule:
            @conforming("cupy.RawModule", method=True)
            def __init__(self, code=None, *, options=(), name_expressions=None, **kwargs):
                gpu.forbid("compiling and loading a module")
                self.precision, self.kernels = gpu.compile(code, tuple(options))

            @conforming("cupy.RawModule.compile")
            def compile(self, log_stream=None):
                if gpu.headers_missing:
                    raise RuntimeError(CUPY_HEADERS_MISSING)

            @conforming("cupy.RawModule.get_function")
            def get_function(self, name):
                assert name in self.kernels, f"no kernel {name} in this module ({sorted(self.kernels)})"
                return RawKernel(name, self.precision, self.kernels[name])

        cupy.RawModule = RawModule

        cuda = _FakeModule("cupy.cuda")
        compiler = _FakeModule("cupy.cuda.compiler")
        compiler.CompileException = type("CompileException", (Exception,), {})
        cuda.compiler = compiler
        runtime = _FakeModule("cupy.cuda.runtime")
        runtime.getDeviceCount = conforming("cupy.cuda.runtime.getDeviceCount")(lambda: 1)
        runtime.getDeviceProperties = conforming("cupy.cuda.runtime.getDeviceProperties")(lambda device: {
            "name": gpu.device_name.encode(), "multiProcessorCount": gpu.num_sms,
            "maxThreadsPerMultiProcessor": 2048, "major": 9, "minor": 0, "totalGlobalMem": 80 << 30})
        runtime.memGetInfo = conforming("cupy.cuda.runtime.memGetInfo")(lambda: (70 << 30, 80 << 30))
        runtime.driverGetVersion = conforming("cupy.cuda.runtime.driverGetVersion")(lambda: gpu.driver_version)
        runtime.runtimeGetVersion = conforming("cupy.cuda.runtime.runtimeGetVersion")(lambda: 12090)
        cuda.runtime = runtime

        class Device:
            @conforming("cupy.cuda.Device", method=True)
            def __init__(self, device=None):
                self.id = 0 if device is None else int(device)

            @conforming("cupy.cuda.Device.use")
            def use(self):
                assert self.id == 0, "the fake has one GPU"

            @conforming("cupy.cuda.Device.synchronize")
            def synchronize(self):
                gpu.forbid("Device.synchronize()")
                gpu.syncs += 1

            compute_capability = "90"

        streams = {}

        class Stream:
            _next = [0x5000]

            @conforming("cupy.cuda.Stream", method=True)
            def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
                Stream._next[0] += 0x10
                self.ptr = 0 if null else Stream._next[0]
                self.non_blocking = non_blocking
                streams[self.ptr] = self

            @conforming("cupy.cuda.Stream.use")
            def use(self):
                gpu.stream_ptr = self.ptr
                return self

            @conforming("cupy.cuda.Stream.synchronize")
            def synchronize(self):
                gpu.forbid("Stream.synchronize()")
                gpu.syncs += 1

            @conforming("cupy.cuda.Stream.begin_capture")
            def begin_capture(self, mode=None):
                assert self.ptr != 0, "CUDA refuses stream capture on the legacy default stream"
                gpu.forbid("a second capture")
                gpu.capturing = (self, [])

            @conforming("cupy.cuda.Stream.is_capturing")
            def is_capturing(self):
                return gpu.capturing is not None and gpu.capturing[0] is self

            @conforming("cupy.cuda.Stream.end_capture")
            def end_capture(self):
                assert self.is_capturing(), "end_capture() on a stream that is not capturing"
                _, recording = gpu.capturing
                gpu.capturing = None
                gpu.captures.append(recording)
                return Graph(recording)

        Stream(null=True)  # the legacy default stream, current until a stream of ours is used

        class Graph:
            """What a capture recorded; launch() runs it again, with the arguments frozen at capture time."""

            def __init__(self, recording):
                self.recording = recording

            @conforming("cupy.cuda.Graph.upload")
            def upload(self, stream=None):
                gpu.forbid("Graph.upload()")

            @conforming("cupy.cuda.Graph.launch")
            def launch(self, stream=None):
                gpu.forbid("a graph launch")
                gpu.graph_launches += 1
                for _, work in self.recording:
                    work()

        class Event:
            """Recorded on a stream, in order; done once the host synchronized after the record."""
            _order = [0]

            @conforming("cupy.cuda.Event", method=True)
            def __init__(self, block=False, disable_timing=False, interprocess=False):
                self.recorded = False

            @conforming("cupy.cuda.Event.record")
            def record(self, stream=None):
                ptr = gpu.stream_ptr if stream is None else stream.ptr
                gpu.enqueue("event record", lambda: self._recorded_on(ptr))

            def _recorded_on(self, ptr):
                self.recorded, self.stream = True, ptr
                Event._order[0] += 1
                self.order, self.syncs_before = Event._order[0], gpu.syncs

            @conforming("cupy.cuda.Event.synchronize")
            def synchronize(self):
                gpu.forbid("Event.synchronize()")
                assert self.recorded, "synchronize on an event never recorded"
                gpu.syncs += 1

        @conforming("cupy.cuda.get_elapsed_time")
        def get_elapsed_time(start_event, end_event):
            gpu.forbid("get_elapsed_time(), which waits for the events")
            assert start_event.recorded and end_event.recorded, "elapsed time between events never recorded"
            assert start_event.stream == end_event.stream, "elapsed time between events of two streams"
            assert start_event.order < end_event.order, "the end event was recorded before the start event"
            assert gpu.syncs > end_event.syncs_before, "elapsed time before the end event completed (cudaErrorNotReady)"
            return 1.0

        cuda.Device, cuda.Stream, cuda.Event, cuda.Graph = Device, Stream, Event, Graph
        cuda.get_elapsed_time = get_elapsed_time
        cuda.get_current_stream = conforming("cupy.cuda.get_current_stream")(
            lambda device_id=-1: streams[gpu.stream_ptr])
        cuda.memory_hook = self.memory_hook_module()
        cuda.nccl = self.nccl_module()
        cupy.cuda = cuda
        cupyx = types.ModuleType("cupyx")

        def empty_pinned(shape, dtype=float, order="C"):
            gpu.forbid("a pinned host allocation")
            nbytes = math.prod((shape,) if np.isscalar(shape) else shape) * np.dtype(dtype).itemsize
            host = np.zeros(nbytes, dtype=np.uint8)
            gpu.pinned.append((host.ctypes.data, host))
            return host.view(dtype).reshape(shape)

        cupyx.empty_pinned = empty_pinned
        return {"cupy": cupy, "cupy.cuda": cuda, "cupy.cuda.runtime": runtime, "cupy.cuda.nccl": cuda.nccl,
                "cupy.cuda.compiler": compiler, "cupy.cuda.memory_hook": cuda.memory_hook, "cupyx": cupyx}

    def memory_hook_module(self):
        """cupy.cuda.memory_hook: a MemoryHook registered with `with` sees every allocation as CuPy reports one."""
        registry = self.registry
        module = _FakeModule("cupy.cuda.memory_hook")

        class MemoryHook:
            name = "MemoryHook"

            @conforming("cupy.cuda.memory_hook.MemoryHook.__enter__")
            def __enter__(self):
                assert all(h.name != self.name for h in registry.hooks), f"memory hook {self.name} already exists"
                registry.hooks.append(self)
                return self

            @conforming("cupy.cuda.memory_hook.MemoryHook.__exit__")
            def __exit__(self, *_):
                registry.hooks.remove(self)

            def alloc_preprocess(self, **kwargs):
                pass

            def alloc_postprocess(self, **kwargs):
                pass

            def malloc_preprocess(self, **kwargs):
                pass

            def malloc_postprocess(self, **kwargs):
                pass

            def free_preprocess(self, **kwargs):
                pass

            def free_postprocess(self, **kwargs):
                pass

        for name in ("alloc_preprocess", "alloc_postprocess", "malloc_preprocess", "malloc_postprocess"):
            real_api(f"cupy.cuda.memory_hook.MemoryHook.{name}")  # the callbacks the registry makes exist
        module.MemoryHook = MemoryHook
        return module

    def nccl_module(self):
        """cupy.cuda.nccl at world size 1 (available unless FakeGPU(nccl=False)): the constants the installed
        CuPy exports, NcclCommunicator and the group calls checked against its signatures; every collective must
        run on the current stream over device memory, and at world size 1 copies send to receive."""
        gpu, lib = self, real_libraries()
        nccl = _FakeModule("cupy.cuda.nccl")
        nccl.available = self.nccl
        if not self.nccl:
            return nccl
        for name, value in lib.nccl_constants.items():
            setattr(nccl, name, value)
        dtypes = {lib.nccl_constants[name]: np.dtype(t) for name, t in NCCL_DTYPES.items()}
        ops = {lib.nccl_constants[name] for name in ("NCCL_SUM", "NCCL_PROD", "NCCL_MAX", "NCCL_MIN", "NCCL_AVG")}

        def collective(what, sendbuf, recvbuf, count, datatype, stream, op=None):
            assert datatype in dtypes, f"NCCL {what}: datatype {datatype} is none of {sorted(dtypes)}"
            assert op is None or op in ops, f"NCCL {what}: op {op}"
            assert stream == gpu.stream_ptr, f"NCCL {what} on stream {stream}, the current one is {gpu.stream_ptr}"
            nbytes = count * dtypes[datatype].itemsize
            send, send_at = gpu.registry.find(sendbuf, nbytes)
            recv, recv_at = gpu.registry.find(recvbuf, nbytes)
            gpu.nccl_calls.append((what, count, datatype, op))
            gpu.enqueue(f"NCCL {what}",  # world size 1: the identity
                        lambda: np.copyto(recv[recv_at:recv_at + nbytes], send[send_at:send_at + nbytes].copy()))

        class NcclCommunicator:
            @conforming("nccl.NcclCommunicator", method=True)
            def __init__(self, ndev, commId, rank, config=None):
                assert (ndev, rank) == (1, 0), "the fake NCCL runs world size 1"
                assert commId == gpu.nccl_uid, "commId is not the unique id get_unique_id() gave"

            @conforming("nccl.NcclCommunicator.allReduce")
            def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
                collective("allReduce", sendbuf, recvbuf, count, datatype, stream, op)

            @conforming("nccl.NcclCommunicator.reduceScatter")
            def reduceScatter(self, sendbuf, recvbuf, recvcount, datatype, op, stream):
                collective("reduceScatter", sendbuf, recvbuf, recvcount, datatype, stream, op)

            @conforming("nccl.NcclCommunicator.allGather")
            def allGather(self, sendbuf, recvbuf, count, datatype, stream):
                collective("allGather", sendbuf, recvbuf, count, datatype, stream)

            @conforming("nccl.NcclCommunicator.abort")
            def abort(self):
                pass

        def group_start():
            gpu.nccl_group_depth += 1

        def group_end():
            assert gpu.nccl_group_depth > 0, "groupEnd without groupStart"
            gpu.nccl_group_depth -= 1

        for name in ("__init__", "allReduce", "reduceScatter", "allGather"):  # classified as the real API is named
            call = "nccl.NcclCommunicator" + ("" if name == "__init__" else f".{name}")
            setattr(NcclCommunicator, name, gpu.library(call, getattr(NcclCommunicator, name)))
        nccl.NcclCommunicator = NcclCommunicator
        nccl.get_unique_id = gpu.library("nccl.get_unique_id", conforming("nccl.get_unique_id")(lambda: gpu.nccl_uid))
        nccl.get_version = conforming("nccl.get_version")(lambda: 22800)
        nccl.groupStart = gpu.library("nccl.groupStart", conforming("nccl.groupStart")(group_start))
        nccl.groupEnd = gpu.library("nccl.groupEnd", conforming("nccl.groupEnd")(group_end))
        return nccl

    def nvmath_modules(self):
        cublas, lt = _fake_cublas(self), _fake_cublaslt(self)
        nvmath = _FakeModule("nvmath")
        bindings = _FakeModule("nvmath.bindings")
        bindings.cublas, bindings.cublasLt = cublas, lt
        nvmath.bindings = bindings
        return {"nvmath": nvmath, "nvmath.bindings": bindings, "nvmath.bindings.cublas": cublas,
                "nvmath.bindings.cublasLt": lt}

# ----------------------------------------------------------------------------
# fake nvmath bindings: the installed nvmath-python's enums, attribute value types and heuristic-result layout,
# and its functions' signatures (conforming), with the libraries' rules about pointers and state behind them


@functools.lru_cache(maxsize=None)
def _data_types():
    """cudaDataType (nvmath's CudaDataType values) -> the numpy dtype of the device storage."""
    dt = real_libraries().data_type
    return {int(dt.CUDA_R_32F): np.dtype(np.float32), int(dt.CUDA_R_16F): np.dtype(np.float16),
            int(dt.CUDA_R_16BF): np.dtype(np.uint16)}


def _values(matrix):
    """float64 values of (batch, rows, cols) matrices of any of the three storage types."""
    if matrix.dtype == np.uint16:
        return matrix.view(BF16).astype(np.float64)
    return matrix.astype(np.float64)


def _store_matrix(matrix, values):
    if matrix.dtype == np.uint16:
        matrix[...] = values.astype(np.float32).astype(BF16).view(np.uint16)
    else:
        matrix[...] = values.astype(matrix.dtype)


def _host_f32(ptr):
    return ctypes.c_float.from_address(ptr).value


def _gemm(gpu, what, transa, transb, m, n, k, alpha, a, atype, lda, stride_a, b, btype, ldb, stride_b, beta, c,
          ctype, ldc, stride_c, batch, epilogue=None):
    """D = alpha op(A) op(B) + beta C, column-major, checked against the device allocations when called and
    enqueued (alpha and beta are host values, read now as cuBLAS reads them). When it runs, (emulating) the
    float64 result is stored into C, or handed to epilogue(C view, result) instead."""
    for name, value in (("m", m), ("n", n), ("k", k), ("batch", batch)):
        assert type(value) is int and value >= 1, f"{what}: {name} = {value!r}"
    assert transa in (0, 1) and transb in (0, 1), f"{what}: transposes {transa}, {transb}"
    reg = gpu.registry
    A = reg.matrix(a, _data_types()[atype], *((k, m) if transa else (m, k)), lda, batch, stride_a)
    B = reg.matrix(b, _data_types()[btype], *((n, k) if transb else (k, n)), ldb, batch, stride_b)
    C = reg.matrix(c, _data_types()[ctype], m, n, ldc, batch, stride_c)
    if batch > 1:
        for x, stride, rows, cols, ld in ((A, stride_a, *A.shape[1:], lda), (B, stride_b, *B.shape[1:], ldb),
                                          (C, stride_c, m, n, ldc)):
            assert stride >= ld * (cols - 1) + rows, f"{what}: batch stride {stride} overlaps matrices"

    def run():
        gpu.blas_calls.append((what, dict(m=m, n=n, k=k, transa=transa, transb=transb, batch=batch)))
        if not gpu.emulate:
            return
        opA = _values(A).transpose(0, 2, 1) if transa else _values(A)
        opB = _values(B).transpose(0, 2, 1) if transb else _values(B)
        result = alpha * (opA @ opB)
        if beta != 0.0:
            result += beta * _values(C)
        if epilogue is None:
            _store_matrix(C, result)
        else:
            epilogue(C, result)
    gpu.enqueue(what, run)


def _fake_cublas(gpu):
    lib = real_libraries()
    real = lib.cublas
    mod = _FakeModule("nvmath.bindings.cublas")
    for name in ("Operation", "Math", "ComputeType", "GemmAlgo", "PointerMode", "cuBLASError"):
        setattr(mod, name, getattr(real, name))
    compute, algo_default, dt = real.ComputeType, int(real.GemmAlgo.DEFAULT), lib.data_type
    f32_compute = (int(compute.COMPUTE_32F), int(compute.COMPUTE_32F_FAST_TF32))
    handles = {}

    def handle_state(h):
        assert h in handles, f"cuBLAS handle {h!r} was never created"
        return handles[h]

    def create():
        h = 0x1000 + len(handles)
        handles[h] = {"stream": 0, "workspace": None, "math": int(real.Math.DEFAULT_MATH)}
        return h

    def destroy(handle):
        handles.pop(handle)

    def set_stream(handle, stream_id):
        state = handle_state(handle)
        state["stream"] = stream_id
        state["workspace"] = None  # cublasSetStream resets the workspace to cuBLAS's own default pool

    def set_workspace(handle, workspace, workspace_size_in_bytes):
        gpu.registry.find(workspace, workspace_size_in_bytes)
        handle_state(handle)["workspace"] = workspace

    def set_math_mode(handle, mode):
        assert mode in {int(m) for m in real.Math}, f"math mode {mode}"
        handle_state(handle)["math"] = mode
        gpu.math_mode[handle] = mode

    def _check(handle, what):
        state = handle_state(handle)
        assert state["stream"] == gpu.stream_ptr, f"{what}: handle stream {state['stream']} is not the current one"
        assert state["workspace"] is not None, \
            f"{what}: no workspace of ours (set_stream resets it to cuBLAS's pool, which allocates and cannot be " \
            f"captured in a CUDA graph): set_workspace after every set_stream"
        return state

    def sgemm(handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        state = _check(handle, "sgemm")
        f32 = int(dt.CUDA_R_32F)
        _gemm(gpu, f"sgemm(math {state['math']})", transa, transb, m, n, k, _host_f32(alpha), a, f32, lda, 0, b,
              f32, ldb, 0, _host_f32(beta), c, f32, ldc, 0, 1)

    def gemm_ex(handle, transa, transb, m, n, k, alpha, a, atype, lda, b, btype, ldb, beta, c, ctype, ldc,
                compute_type, algo):
        _check(handle, "gemm_ex")
        assert compute_type in f32_compute and algo == algo_default, f"gemm_ex: compute {compute_type}, algo {algo}"
        assert (atype, btype, ctype) == (dt.CUDA_R_16F, dt.CUDA_R_16F, dt.CUDA_R_32F), \
            f"gemm_ex: types {(atype, btype, ctype)}, expected fp16 -> f32"
        _gemm(gpu, "gemm_ex", transa, transb, m, n, k, _host_f32(alpha), a, atype, lda, 0, b, btype, ldb, 0,
              _host_f32(beta), c, ctype, ldc, 0, 1)

    def gemm_strided_batched_ex(handle, transa, transb, m, n, k, alpha, a, atype, lda, stride_a, b, btype, ldb,
                                stride_b, beta, c, ctype, ldc, stride_c, batch_count, compute_type, algo):
        _check(handle, "gemm_strided_batched_ex")
        assert atype == btype == ctype and atype in (dt.CUDA_R_32F, dt.CUDA_R_16BF), \
            f"strided batched: types {(atype, btype, ctype)}"
        assert compute_type in f32_compute and algo == algo_default, \
            f"strided batched: compute {compute_type}, algo {algo}"
        if compute_type == compute.COMPUTE_32F_FAST_TF32:
            assert atype == dt.CUDA_R_32F, "TF32 compute with bf16 operands"
        _gemm(gpu, f"gemm_strided_batched_ex(compute {compute_type})", transa, transb, m, n, k, _host_f32(alpha),
              a, atype, lda, stride_a, b, btype, ldb, stride_b, _host_f32(beta), c, ctype, ldc, stride_c, batch_count)

    for fn in (create, destroy, set_stream, set_workspace, set_math_mode, sgemm, gemm_ex, gemm_strided_batched_ex):
        setattr(mod, fn.__name__, gpu.library(f"cublas.{fn.__name__}", conforming(f"cublas.{fn.__name__}")(fn)))
    return mod


# what each library entry point may do inside a stream capture (see the module docstring); matching CUDA's rules:
# handle creation allocates device memory, GEMMs on a handle with a user workspace are capturable, descriptors,
# layouts, preferences and the heuristic query are host-side
LIBRARY_CALLS = {
    "cublas.create": "setup", "cublas.destroy": "setup", "cublas.set_stream": "host", "cublas.set_workspace": "host",
    "cublas.set_math_mode": "host", "cublas.sgemm": "work", "cublas.gemm_ex": "work",
    "cublas.gemm_strided_batched_ex": "work",
    "cublasLt.create": "setup", "cublasLt.get_version": "host", "cublasLt.matmul_desc_create": "host",
    "cublasLt.matmul_desc_set_attribute": "host",
    "cublasLt.matrix_layout_create": "host", "cublasLt.matmul_preference_create": "host",
    "cublasLt.matmul_preference_set_attribute": "host", "cublasLt.matmul_algo_get_heuristic": "host",
    "cublasLt.matmul": "work",
    "nccl.NcclCommunicator": "setup", "nccl.get_unique_id": "setup", "nccl.groupStart": "host",
    "nccl.groupEnd": "host", "nccl.NcclCommunicator.allReduce": "work", "nccl.NcclCommunicator.reduceScatter": "work",
    "nccl.NcclCommunicator.allGather": "work",
    "cudnn.create_handle": "setup", "cudnn.pygraph": "setup",  # a graph is declared and its plans built at allocate
}

CUBLASLT_DEFAULT_ALIGNMENT = 256  # MIN_ALIGNMENT_{A,B,C,D}_BYTES when the preference does not set them (cuBLAS docs)


def _alignment(ptr):
    return ptr & -ptr if ptr else 1 << 64


def _fake_cublaslt(gpu):
    lib = real_libraries()
    real, ct, dt = lib.lt, lib.cublas.ComputeType, lib.data_type
    mod = _FakeModule("nvmath.bindings.cublasLt")
    for name in ("MatmulDescAttribute", "MatmulPreferenceAttribute", "Epilogue", "matmul_heuristic_result_dtype",
                 "get_matmul_desc_attribute_dtype", "get_matmul_preference_attribute_dtype", "cuBLASLtError"):
        setattr(mod, name, getattr(real, name))
    heuristic_dtype = real.matmul_heuristic_result_dtype
    objects, algos = {}, {}  # algos: heuristic result address -> the alignments the algorithm was chosen for

    def new(kind, **fields):
        h = 0x2000 + len(objects)
        objects[h] = dict(kind=kind, **fields)
        return h

    def get(h, kind):
        assert h in objects and objects[h]["kind"] == kind, f"cuBLASLt: {h!r} is not a live {kind}"
        return objects[h]

    def read_attribute(what, buf, size_in_bytes, dtype):
        dtype = np.dtype(dtype)
        assert size_in_bytes == dtype.itemsize, f"{what}: {size_in_bytes} bytes, nvmath says {dtype}"
        return np.frombuffer(ctypes.string_at(buf, size_in_bytes), dtype=dtype)[0].item()

    def create():
        return new("handle")

    def get_version():
        return 130000

    def matmul_desc_create(compute_type, scale_type):
        assert compute_type == ct.COMPUTE_32F and scale_type == dt.CUDA_R_32F, \
            f"matmul desc: compute {compute_type}, scale {scale_type}"
        return new("desc", attrs={})

    def matmul_desc_set_attribute(matmul_desc, attr, buf, size_in_bytes):
        name = real.MatmulDescAttribute(attr).name
        get(matmul_desc, "desc")["attrs"][name] = read_attribute(
            name, buf, size_in_bytes, real.get_matmul_desc_attribute_dtype(attr))

    def matrix_layout_create(type, rows, cols, ld):  # noqa: A002 (nvmath's parameter name)
        assert type in _data_types() and rows >= 1 and cols >= 1 and ld >= rows, \
            f"layout {type} {rows}x{cols} ld {ld}"
        return new("layout", type=type, rows=rows, cols=cols, ld=ld)

    def matmul_preference_create():
        return new("preference", attrs={})

    def matmul_preference_set_attribute(pref, attr, buf, size_in_bytes):
        name = real.MatmulPreferenceAttribute(attr).name
        get(pref, "preference")["attrs"][name] = read_attribute(
            name, buf, size_in_bytes, real.get_matmul_preference_attribute_dtype(attr))

    def matmul_algo_get_heuristic(light_handle, operation_desc, adesc, bdesc, cdesc, ddesc, preference,
                                  requested_algo_count, heuristic_results_array, return_algo_count):
        get(light_handle, "handle")
        get(operation_desc, "desc")
        for h in (adesc, bdesc, cdesc, ddesc):
            get(h, "layout")
        prefs = get(preference, "preference")["attrs"]
        assert prefs.get("MAX_WORKSPACE_BYTES", 0) > 0
        assert requested_algo_count >= 1
        ctypes.memset(heuristic_results_array, 0, heuristic_dtype.itemsize * requested_algo_count)
        ctypes.c_int32.from_address(return_algo_count).value = 1
        algos[heuristic_results_array + heuristic_dtype.fields["algo"][1]] = {
            x: prefs.get(f"MIN_ALIGNMENT_{x}_BYTES", CUBLASLT_DEFAULT_ALIGNMENT) for x in "ABCD"}

    def matmul(light_handle, compute_desc, alpha, a, adesc, b, bdesc, beta, c, cdesc, d, ddesc, algo, workspace,
               workspace_size_in_bytes, stream):
        get(light_handle, "handle")
        attrs = get(compute_desc, "desc")["attrs"]
        A, B, C, D = (get(h, "layout") for h in (adesc, bdesc, cdesc, ddesc))
        assert stream == gpu.stream_ptr, f"cuBLASLt matmul on stream {stream}, the current one is {gpu.stream_ptr}"
        assert algo in algos, "cuBLASLt: the algo pointer is not the algo field of a heuristic result"
        for x, ptr in zip("ABCD", (a, b, c, d)):
            need = algos[algo][x]
            assert ptr % need == 0, \
                f"cuBLASLt: {x} at {ptr:#x} is {min(_alignment(ptr), 256)}-byte aligned, but the algorithm was " \
                f"chosen for MIN_ALIGNMENT_{x}_BYTES = {need} (256 unless the preference says less)"
        gpu.registry.find(workspace, workspace_size_in_bytes)
        assert C == D and c == d, "C and D differ: llmc_py accumulates in place"
        transa, transb = attrs.get("TRANSA", 0), attrs.get("TRANSB", 0)
        m, n = D["rows"], D["cols"]
        opA = (A["cols"], A["rows"]) if transa else (A["rows"], A["cols"])
        opB = (B["cols"], B["rows"]) if transb else (B["rows"], B["cols"])
        assert opA[0] == m and opB[1] == n and opA[1] == opB[0], f"cuBLASLt: op(A) {opA} op(B) {opB} D {(m, n)}"
        assert A["type"] == B["type"] == D["type"], "cuBLASLt: one data type for A, B, D"
        epilogue = real.Epilogue(attrs.get("EPILOGUE", int(real.Epilogue.DEFAULT))).name
        assert epilogue in ("DEFAULT", "BIAS", "GELU_AUX", "GELU_AUX_BIAS", "DGELU"), f"epilogue {epilogue}"
        dtype = _data_types()[D["type"]]
        bias = aux = None
        if "BIAS" in epilogue:
            assert attrs.get("BIAS_DATA_TYPE") == D["type"], "bias data type"
            assert attrs["BIAS_POINTER"] % 16 == 0, "bias not 16-byte aligned"
            bias = gpu.registry.matrix(attrs["BIAS_POINTER"], dtype, m, 1, m)
        if "AUX" in epilogue or epilogue == "DGELU":
            assert attrs.get("EPILOGUE_AUX_LD", 0) >= m, "aux leading dimension"
            assert attrs["EPILOGUE_AUX_POINTER"] % 16 == 0, "aux not 16-byte aligned"
            aux = gpu.registry.matrix(attrs["EPILOGUE_AUX_POINTER"], dtype, m, n, attrs["EPILOGUE_AUX_LD"])
        k = opA[1]

        def apply_epilogue(Dm, result):
            from llmc_py.gelu import gelu_backward_inplace, gelu_forward
            x = result[0]  # A B (+ beta C) in f64: the epilogue comes before the one rounding into D
            if bias is not None:
                x = x + _values(bias)[0]
            x = x.astype(np.float32)
            if epilogue == "BIAS":
                _store_matrix(Dm[0], x)
            elif epilogue in ("GELU_AUX", "GELU_AUX_BIAS"):
                _store_matrix(aux[0], x)
                g = np.empty_like(x)
                gelu_forward(g, x)
                _store_matrix(Dm[0], g)
            else:  # DGELU
                gelu_backward_inplace(x, _values(aux)[0].astype(np.float32))
                _store_matrix(Dm[0], x)
        _gemm(gpu, f"cublasLt {epilogue}", transa, transb, m, n, k, _host_f32(alpha), a, A["type"], A["ld"], 0, b,
              B["type"], B["ld"], 0, _host_f32(beta), d, D["type"], D["ld"], 0, 1,
              epilogue=None if epilogue == "DEFAULT" else apply_epilogue)

    for fn in (create, get_version, matmul_desc_create, matmul_desc_set_attribute, matrix_layout_create,
               matmul_preference_create, matmul_preference_set_attribute, matmul_algo_get_heuristic, matmul):
        setattr(mod, fn.__name__, gpu.library(f"cublasLt.{fn.__name__}", conforming(f"cublasLt.{fn.__name__}")(fn)))
    return mod

# ----------------------------------------------------------------------------
# installing


def install(monkeypatch, emulate=False, **kwargs):
    """Puts the fake cupy, nvmath and cudnn modules into sys.modules (undone after the test) and clears llmc_py's
    caches of modules, devices, BLAS and cuDNN contexts; returns the FakeGPU."""
    import fake_cudnn  # here, not at the top: fake_cudnn imports this module's to_f32 and store
    import llmc_py.attention_cudnn
    import llmc_py.blas
    import llmc_py.cuda
    real_libraries()  # the installed CuPy and nvmath, imported (and kept) before the fakes take their places
    gpu = FakeGPU(emulate=emulate, **kwargs)
    for name, module in {**gpu.cupy_module(), **gpu.nvmath_modules(), **fake_cudnn.modules(gpu)}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(llmc_py.cuda, "_modules", {})
    monkeypatch.setattr(llmc_py.cuda, "_functions", {})
    monkeypatch.setattr(llmc_py.cuda, "_devices", {})
    monkeypatch.setattr(llmc_py.blas, "_contexts", {})
    monkeypatch.setattr(sys.modules[__name__], "_active", gpu)
    monkeypatch.setattr(llmc_py.attention_cudnn, "_contexts", {})
    return gpu
