"""CUDA plumbing: the NVRTC options, kernels_cu/*.cu compiled into CuPy modules, and a compile check without a GPU.

Design decision: this is the one place that knows how kernels are compiled. `nvrtc_options` builds the option
list for a precision (floatX from -DENABLE_BF16 / -DENABLE_FP32), `load_module` hands it to cupy.RawModule,
which adds the GPU's own -arch and caches the cubin on disk, and `compile_check` runs NVRTC directly through
cupy.cuda.nvrtc with the same options plus the ones RawModule appends itself, so CI compiles for sm_80 and sm_90
on a machine with no GPU and no driver. CuPy's disk cache keys on the .cu text and the options but not on the
headers a kernel includes, so the options carry a digest of kernels_cu/*.cuh: editing common.cuh recompiles.
CuPy is imported only inside the functions that need it, never when this module is imported.

The second half is the device side every launcher shares: `require_device` (one clear line when no GPU
answers), `init_device` (the GPU, its properties and one non-blocking stream made current, which every launch,
cuBLAS call, copy and NCCL call then runs on, and which CUDA graphs are captured on), floatX storage (bf16 lives
in uint16 arrays: CuPy has no bfloat16 dtype; the host converts with ml_dtypes, round to nearest even), `launch`
(kernels loaded once per (file, precision)), `zero` (a memset), `Staging` (what the host writes for the device
each step: pinned host memory copied over asynchronously), `capture` (a CUDA graph of some device work), and a
step timer that uses CUDA events on the GPU and the wall clock on the CPU. Before the first device call,
`require_device` also compares the installed CUDA packages with the driver: one built for a newer CUDA major than
the driver supports (cupy-cuda13x or cuda-bindings 13 on a CUDA 12 driver) fails at its first call, so it stops
with a line naming the package to change; `versions_line` is the start-up line naming the stack in use.
"""
import functools
import hashlib
import importlib.metadata
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmc_py import LlmcError

KERNELS_DIR = Path(__file__).resolve().parent.parent / "kernels_cu"
PRECISION_DEFINES = {"bf16": "-DENABLE_BF16", "fp32": "-DENABLE_FP32"}
CHECK_ARCHS = ("80", "90")  # what CI compiles for: A100 and H100
# the flags cupy.RawModule appends to ours on every NVRTC compile (besides -arch and its own include paths)
CUPY_EXTRA_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")
NVRTC_PACKAGES = "cupy-cuda12x nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12"
# where cuda_bf16.h and the other CUDA runtime headers come from, for CuPy 12 and 13 alike
HEADERS_HINT = ("pip install nvidia-cuda-runtime-cu12 (CUDA 12) or nvidia-cuda-runtime (CUDA 13), "
                "or set CUDA_PATH to a CUDA toolkit")
# the start of the RuntimeError CuPy 14 raises before NVRTC runs when it finds no CUDA runtime headers
CUPY_HEADERS_MISSING = "Failed to find CUDA headers"

# ----------------------------------------------------------------------------
# options


def kernel_files():
    """Every kernel source, kernels_cu/*.cu, sorted by name."""
    return sorted(KERNELS_DIR.glob("*.cu"))


def normalize_arch(arch):
    """'90' from 90, '90', 'sm_90', '9.0' or (9, 0)."""
    if isinstance(arch, tuple):
        return f"{arch[0]}{arch[1]}"
    text = str(arch).strip().lower()
    text = text.removeprefix("sm_").removeprefix("compute_").replace(".", "")
    if not text.isdigit():
        raise LlmcError(f"GPU architecture {arch!r}: expected a compute capability such as 90 or sm_90")
    return text


@functools.lru_cache(maxsize=None)
def cuda_include_dir():
    """The folder holding cuda_bf16.h (CUDA runtime headers), or None. NVRTC ships no such header: it comes
    from the nvidia-cuda-runtime wheel (found through cuda-pathfinder, which CuPy 14 depends on), or from a
    CUDA toolkit (CUDA_PATH, CUDA_HOME, /usr/local/cuda)."""
    candidates = []
    try:
        from cuda.pathfinder import find_nvidia_header_directory
        candidates.append(find_nvidia_header_directory("cudart"))
    except Exception:  # no cuda-pathfinder (CuPy 13) or nothing found: fall through to the toolkit paths
        pass
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "include"))
    candidates.append("/usr/local/cuda/include")
    for folder in candidates:
        if folder and os.path.isfile(os.path.join(folder, "cuda_bf16.h")):
            return folder
    return None


def _headers_digest():
    """12 hex digits over kernels_cu/*.cuh: part of the options, so CuPy's cubin cache sees header edits."""
    h = hashlib.sha256()
    for path in sorted(KERNELS_DIR.glob("*.cuh")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def nvrtc_options(precision, arch=None):
    """NVRTC options for a precision ('bf16' or 'fp32'); with arch (e.g. 90) also --gpu-architecture=sm_90,
    which is left out for cupy.RawModule (it picks the current GPU's). --use_fast_math as llm.c builds
    (fast expf/logf/tanhf, approximate division and sqrt, denormals flushed), which matters for bit-exactness."""
    if precision not in PRECISION_DEFINES:
        raise LlmcError(f"precision {precision!r}: expected one of {', '.join(PRECISION_DEFINES)}")
    options = ["--std=c++17", "--use_fast_math", PRECISION_DEFINES[precision],
               f"-DLLMC_HEADERS_DIGEST=0x{_headers_digest()}", f"-I{KERNELS_DIR}"]
    include = cuda_include_dir()
    if include is not None:
        options.append(f"-I{include}")
    if arch is not None:
        options.append(f"--gpu-architecture=sm_{normalize_arch(arch)}")
    return tuple(options)


def _failure(what, log):
    hint = ""
    if "cuda_bf16.h" in log and cuda_include_dir() is None:
        hint = f" (cuda_bf16.h not found: {HEADERS_HINT})"
    return LlmcError(f"{what}: NVRTC compilation failed{hint}\n{log.strip()}")

# ----------------------------------------------------------------------------
# compile without a GPU


def compile_check(path, precision, arch):
    """Compiles one kernel file to a cubin for sm_<arch> with NVRTC alone (no GPU or driver needed).
    Returns NVRTC's log (usually empty); raises LlmcError with the log when compilation fails."""
    path = Path(path)
    try:
        from cupy.cuda import nvrtc
    except ImportError as e:
        raise LlmcError(f"NVRTC unavailable ({e}): pip install {NVRTC_PACKAGES}") from None
    options = nvrtc_options(precision, arch) + CUPY_EXTRA_OPTIONS
    what = f"{path.name} ({precision}, sm_{normalize_arch(arch)})"
    try:
        prog = nvrtc.createProgram(path.read_text(), str(path), [], [])
    except Exception as e:  # libnvrtc missing or unloadable
        raise LlmcError(f"{what}: NVRTC unavailable ({e}): pip install {NVRTC_PACKAGES}") from None
    try:
        try:
            nvrtc.compileProgram(prog, list(options))
        except nvrtc.NVRTCError:
            raise _failure(what, nvrtc.getProgramLog(prog)) from None
        log = nvrtc.getProgramLog(prog)
        if not nvrtc.getCUBIN(prog):
            raise LlmcError(f"{what}: NVRTC produced no cubin\n{log}")
        return log
    finally:
        nvrtc.destroyProgram(prog)

# ----------------------------------------------------------------------------
# modules on the GPU

_modules = {}


def load_module(name, precision, name_expressions=None):
    """The compiled kernels_cu/<name>.cu for this precision on the current GPU, as a cupy.RawModule (compiled
    once per process and device; CuPy keeps the cubin on disk across runs). Kernels are extern "C", so
    `load_module(name, p).get_function("kernel_name")`; templates need their name expressions listed here."""
    import cupy

    key = (name, precision, cupy.cuda.Device().id, tuple(name_expressions or ()))
    module = _modules.get(key)
    if module is None:
        path = KERNELS_DIR / f"{name}.cu"
        if not path.is_file():
            raise LlmcError(f"{path}: no such kernel file")
        module = cupy.RawModule(code=path.read_text(), options=nvrtc_options(precision),
                                name_expressions=list(name_expressions) if name_expressions else None)
        try:
            module.compile()
        except cupy.cuda.compiler.CompileException as e:
            raise _failure(f"{path.name} ({precision})", str(e)) from None
        except RuntimeError as e:
            if CUPY_HEADERS_MISSING not in str(e):
                raise
            raise LlmcError(f"{path.name} ({precision}): CuPy finds no CUDA runtime headers (cuda_bf16.h) to "
                            f"compile the kernels with: {HEADERS_HINT}") from None
        _modules[key] = module
    return module


_functions = {}


def get_kernel(name, precision, kernel):
    """One kernel function of kernels_cu/<name>.cu, e.g. get_kernel('gelu', 'bf16', 'gelu_forward_kernel');
    looked up once per (file, precision, kernel, device) and kept."""
    import cupy

    key = (name, precision, kernel, cupy.cuda.Device().id)
    function = _functions.get(key)
    if function is None:
        function = load_module(name, precision).get_function(kernel)
        _functions[key] = function
    return function


def launch(name, kernel, grid, block, args, precision, shared_mem=0):
    """Launches kernels_cu/<name>.cu's `kernel` on the current stream. args follow the kernel's signature with
    numpy scalar types (int -> np.int32, size_t -> np.uint64, ptrdiff_t -> np.int64, float -> np.float32,
    unsigned -> np.uint32; a null pointer is np.uint64(0)) and C-contiguous device arrays for pointers."""
    get_kernel(name, precision, kernel)(tuple(int(g) for g in grid), tuple(int(b) for b in block), tuple(args),
                                        shared_mem=int(shared_mem))

# ----------------------------------------------------------------------------
# floatX storage and the host side of it

FLOATX_DTYPES = {"bf16": np.dtype(np.uint16), "fp32": np.dtype(np.float32)}  # device storage of floatX
NULL = np.uint64(0)  # a null pointer argument


def floatx_dtype(precision):
    if precision not in FLOATX_DTYPES:
        raise LlmcError(f"precision {precision!r}: expected one of {', '.join(FLOATX_DTYPES)}")
    return FLOATX_DTYPES[precision]


def precision_of(array):
    """'bf16' for a uint16 (bf16 bit pattern) device array, 'fp32' for a float32 one."""
    if array.dtype == np.uint16:
        return "bf16"
    if array.dtype == np.float32:
        return "fp32"
    raise LlmcError(f"a floatX buffer must be uint16 (bf16) or float32, found {array.dtype}")


def x128_size(precision):
    """Elements in one 16-byte packet of floatX (kernels_cu/common.cuh's x128::size)."""
    return 8 if precision == "bf16" else 4


def on_device(array):
    """True for a device array (anything but a plain numpy.ndarray): the launchers dispatch on this."""
    return type(array) is not np.ndarray


def host_floatx(values, precision):
    """A host array in the device storage of floatX: float32, or bf16 bits as uint16 (round to nearest even
    from float32; bf16 values are taken as they are)."""
    import ml_dtypes

    values = np.asarray(values)
    if precision == "fp32":
        return np.ascontiguousarray(values, dtype=np.float32)
    if values.dtype != np.dtype(ml_dtypes.bfloat16):
        values = np.ascontiguousarray(values, dtype=np.float32).astype(ml_dtypes.bfloat16)
    return np.ascontiguousarray(values).view(np.uint16)


def zero(array):
    """array[...] = 0 for a C-contiguous array: a memset on the current stream for a device array (no kernel,
    capturable), fill for a NumPy one."""
    if on_device(array):
        array.data.memset_async(0, array.nbytes)
    else:
        array.fill(0)


def to_host(array):
    """A float32 (or int) numpy copy of a device array; bf16 bits (uint16) are widened exactly. A numpy
    array is returned as it is."""
    import ml_dtypes

    if not on_device(array):
        return array
    host = array.get()
    if host.dtype == np.uint16:
        host = host.view(ml_dtypes.bfloat16).astype(np.float32)
    return host

# ----------------------------------------------------------------------------
# the device


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str                 # deviceProp.name, what the MFU table is keyed on
    num_sms: int
    max_threads_per_sm: int
    compute_capability: str   # e.g. "90"
    total_memory: int         # bytes


def _one_line(text):
    return " ".join(str(text).split())


def error_line(e):
    """An exception as one line, 'Type: message': for the one-line errors that quote a library's own."""
    return _one_line(f"{type(e).__name__}: {e}")


def require_device(what="--device cuda", hint="; use --device cpu"):
    """Imports CuPy and checks that at least one CUDA device answers and that the CUDA packages suit the driver;
    otherwise raises one LlmcError line (`what`: the flag or program that needs the GPU, `hint`: what to do
    instead)."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a CuPy that fails to load its CUDA libraries
        raise LlmcError(f"{what}: no CUDA device found (cupy cannot be imported: {_one_line(e)}); install the "
                        f"GPU requirements (requirements.txt, or requirements-cu13.txt for a CUDA 13 driver)"
                        f"{hint}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, or CuPy built for another CUDA
        mismatch = package_mismatch(_driver_major())
        raise LlmcError(f"{what}: no CUDA device found (cupy {cupy.__version__}: {error_line(e)})"
                        f"{'; ' + mismatch if mismatch else hint}") from None
    if count < 1:
        raise LlmcError(f"{what}: no CUDA device found (cupy {cupy.__version__} sees 0 devices){hint}")
    mismatch = package_mismatch(_driver_major())
    if mismatch:
        raise LlmcError(f"{what}: {mismatch}")
    return count

# ----------------------------------------------------------------------------
# the CUDA packages in use, and the combinations known to fail

# packages whose CUDA major is in their name (cupy-cuda12x) or, for these, in their version's first number
VERSIONED_BY_MAJOR = ("cuda-bindings",)
INSTALL_FILES = {12: "requirements.txt", 13: "requirements-cu13.txt"}


def _dist_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cupy_package():
    """(distribution name, CUDA major) of the installed CuPy wheel, e.g. ('cupy-cuda13x', 13), or (None, None)."""
    for dist in importlib.metadata.packages_distributions().get("cupy", []):
        if dist.startswith("cupy-cuda") and dist.endswith("x") and dist[len("cupy-cuda"):-1].isdigit():
            return dist, int(dist[len("cupy-cuda"):-1])
    return None, None


def _driver_major():
    """The CUDA major version the driver supports (cudaDriverGetVersion, which answers without a usable device),
    or None when there is no driver."""
    try:
        import cupy
        return cupy.cuda.runtime.driverGetVersion() // 1000 or None
    except Exception:
        return None


def _install_file(major):
    """The install file for a driver of this CUDA major (a newer driver runs our newest line)."""
    return INSTALL_FILES.get(major) or INSTALL_FILES[max(INSTALL_FILES) if major > max(INSTALL_FILES) else 12]


def package_mismatch(driver_major):
    """One line naming the package to change when an installed CUDA package is built for a newer CUDA major than
    the driver supports (a combination that fails at the first call), else None."""
    if driver_major is None:
        return None
    cupy_dist, cupy_major = _cupy_package()
    if cupy_major is not None and cupy_major > driver_major:
        return (f"{cupy_dist} needs a CUDA {cupy_major} driver, this driver supports CUDA {driver_major}: install "
                f"cupy-cuda{driver_major}x instead (pip install -r {_install_file(driver_major)})")
    for name in VERSIONED_BY_MAJOR:
        version = _dist_version(name)
        major = int(version.split(".")[0]) if version and version.split(".")[0].isdigit() else None
        if major is not None and major > driver_major:
            return (f"{name} {version} needs a CUDA {major} driver, this driver supports CUDA {driver_major}: "
                    f"pip install '{name}<{driver_major + 1}' (see {_install_file(driver_major)})")
    return None


def _cuda_version_text(value):
    """CUDA's 1000 * major + 10 * minor as 'major.minor'."""
    return f"{value // 1000}.{value % 1000 // 10}"


def dotted_version(code):
    """cuDNN 9's and NCCL's 10000 * major + 100 * minor + patch as 'major.minor.patch'."""
    return f"{code // 10000}.{code % 10000 // 100}.{code % 100}"


def versions_line():
    """One line naming the CUDA stack in use: driver and runtime, cupy, cuda-bindings, nvmath, cuDNN and NCCL
    ('n/a' for a piece that is missing or does not load). Importing cuDNN's frontend and NCCL is cheap and
    loads no kernels."""
    import cupy

    rt = cupy.cuda.runtime
    parts = [f"CUDA driver {_cuda_version_text(rt.driverGetVersion())}",
             f"runtime {_cuda_version_text(rt.runtimeGetVersion())}",
             f"cupy {cupy.__version__} ({_cupy_package()[0] or 'n/a'})",
             f"cuda-bindings {_dist_version('cuda-bindings') or 'n/a'}",
             f"nvmath {_dist_version('nvmath-python') or 'n/a'}"]
    try:
        import cudnn
        parts.append(f"cuDNN {dotted_version(cudnn.backend_version())} (frontend {cudnn.__version__})")
    except Exception:  # not installed, or libcudnn missing: attention then runs our kernels
        parts.append("cuDNN n/a")
    try:
        from cupy.cuda import nccl
        parts.append(f"NCCL {dotted_version(nccl.get_version())}" if nccl.available else "NCCL n/a")
    except Exception:
        parts.append("NCCL n/a")
    return " | ".join(parts)


_devices = {}


def init_device(index=0, what="--device cuda", hint="; use --device cpu"):
    """Makes GPU `index` current with one stream of ours as the current stream, and returns its DeviceInfo.
    Idempotent. The stream is non-blocking: the legacy default stream never synchronizes with it, so nothing
    outside our control can break a CUDA graph capture on it (CUDA refuses capture on the legacy stream)."""
    require_device(what, hint)
    import cupy

    count = cupy.cuda.runtime.getDeviceCount()
    if not 0 <= index < count:
        raise LlmcError(f"--device cuda: GPU {index} requested (local rank), but only {count} visible")
    cupy.cuda.Device(index).use()
    if index not in _devices:
        props = cupy.cuda.runtime.getDeviceProperties(index)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        info = DeviceInfo(index=index, name=name, num_sms=int(props["multiProcessorCount"]),
                          max_threads_per_sm=int(props["maxThreadsPerMultiProcessor"]),
                          compute_capability=f"{props['major']}{props['minor']}",
                          total_memory=int(props["totalGlobalMem"]))
        _devices[index] = (info, cupy.cuda.Stream(non_blocking=True))
    info, stream = _devices[index]
    stream.use()
    return info


def device_info():
    """The DeviceInfo of the current GPU (init_device runs on first use)."""
    import cupy

    index = cupy.cuda.Device().id
    if index not in _devices:
        init_device(index)
    return _devices[index][0]


def per_device(contexts, make):
    """contexts[current GPU], made by make() on first use: a library's handles and state, one set per GPU."""
    import cupy

    index = cupy.cuda.Device().id
    if index not in contexts:
        contexts[index] = make()
    return contexts[index]


def memory_usage():
    """(used MiB, total MiB) of the current GPU."""
    import cupy

    free, total = cupy.cuda.runtime.memGetInfo()
    return (total - free) >> 20, total >> 20


class Staging:
    """What the host writes for the device work of a step (token ids, per-step scalars, seeds): one device buffer
    laid out as `layout` ({name: (byte offset, dtype, count)}, `nbytes` in all) with typed views `device[name]`,
    and two pinned host copies of it that take turns. `host()` hands out the typed views of the current host copy,
    first waiting (an event) until that copy's previous transfer has run; `send(names)` copies the span of those
    entries (adjacent in the layout) to the device asynchronously on the current stream, ordered before whatever
    the stream runs next, a replayed CUDA graph included, and hands the next turn to the other host copy, so the
    host fills one while the GPU may still read the other. Without a GPU the host views are the buffers the
    NumPy ops read and send() only checks its names."""

    def __init__(self, layout, nbytes, gpu):
        self.layout = dict(layout)
        self._order = list(self.layout)
        self._turn = 0
        nbytes = max(int(nbytes), 1)
        if gpu:
            import cupy
            import cupyx
            self._device = cupy.empty(nbytes, dtype=cupy.uint8)
            self._hosts = [cupyx.empty_pinned(nbytes, dtype=np.uint8) for _ in range(2)]
            self._events = [cupy.cuda.Event(disable_timing=True) for _ in range(2)]
        else:
            self._device = np.zeros(nbytes, dtype=np.uint8)
            self._hosts, self._events = [self._device], [None]
        self.device = self._views(self._device)
        self._host_views = [self._views(h) for h in self._hosts]
        self._sent = [False] * len(self._hosts)

    def _views(self, buf):
        return {name: buf[off:off + n * dt.itemsize].view(dt) for name, (off, dt, n) in self.layout.items()}

    def host(self):
        """{name: host view} of the copy to fill now."""
        if self._sent[self._turn]:
            self._events[self._turn].synchronize()  # its last transfer has left the host memory
            self._sent[self._turn] = False
        return self._host_views[self._turn]

    def send(self, names):
        """Copies entries `names` (adjacent in the layout, all written through host()) to the device."""
        idx = sorted(self._order.index(name) for name in names)
        if idx != list(range(idx[0], idx[-1] + 1)):
            raise ValueError(f"staging: {names} are not adjacent in the layout {self._order}")
        if self._events[0] is None:
            return
        first, last = self.layout[self._order[idx[0]]], self.layout[self._order[idx[-1]]]
        start, end = first[0], last[0] + last[2] * last[1].itemsize
        host = self._hosts[self._turn]
        self._device[start:end].data.copy_from_host_async(host.ctypes.data + start, end - start)
        self._events[self._turn].record()
        self._sent[self._turn] = True
        self._turn ^= 1


def capture(work):
    """Runs work() under stream capture on the current stream and returns the CUDA graph it recorded, uploaded
    and ready to launch(). Capture records, it does not run: the work happens at each launch. Nothing in work()
    may allocate, synchronize or read back, and every kernel argument is frozen into the graph, so whatever
    changes between launches must be read by the kernels from device memory."""
    import cupy

    stream = cupy.cuda.get_current_stream()
    stream.begin_capture()
    try:
        work()
    finally:
        graph = stream.end_capture()  # also when work() raised: the stream must leave capture mode
    graph.upload(stream)
    return graph


class StepTimer:
    """Milliseconds between start() and stop(): CUDA events recorded on the current stream for the GPU (stop()
    waits for the GPU), perf_counter for the CPU. Made once, reused every step."""

    def __init__(self, gpu):
        self.gpu = gpu
        if gpu:
            import cupy
            self._start, self._end = cupy.cuda.Event(), cupy.cuda.Event()
        self._t0 = 0.0

    def start(self):
        if self.gpu:
            self._start.record()
        else:
            self._t0 = time.perf_counter()

    def stop(self):
        if not self.gpu:
            return (time.perf_counter() - self._t0) * 1000.0
        import cupy
        self._end.record()
        self._end.synchronize()
        return float(cupy.cuda.get_elapsed_time(self._start, self._end))
