"""CUDA plumbing: the NVRTC options, kernels_cu/*.cu compiled into CuPy modules, and a compile check without a GPU.

Design decision: this is the one place that knows how kernels are compiled. `nvrtc_options` builds the option
list for a precision (floatX from -DENABLE_BF16 / -DENABLE_FP32), `load_module` hands it to cupy.RawModule,
which adds the GPU's own -arch and caches the cubin on disk, and `compile_check` runs NVRTC directly through
cupy.cuda.nvrtc with the same options plus the ones RawModule appends itself, so CI compiles for sm_80 and sm_90
on a machine with no GPU and no driver. CuPy's disk cache keys on the .cu text and the options but not on the
headers a kernel includes, so the options carry a digest of kernels_cu/*.cuh: editing common.cuh recompiles.
CuPy is imported only inside the functions that need it, never when this module is imported.
"""
import functools
import hashlib
import os
from pathlib import Path

from llmc_py import LlmcError

KERNELS_DIR = Path(__file__).resolve().parent.parent / "kernels_cu"
PRECISION_DEFINES = {"bf16": "-DENABLE_BF16", "fp32": "-DENABLE_FP32"}
CHECK_ARCHS = ("80", "90")  # what CI compiles for: A100 and H100
# the flags cupy.RawModule appends to ours on every NVRTC compile (besides -arch and its own include paths)
CUPY_EXTRA_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")
NVRTC_PACKAGES = "cupy-cuda12x nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12"

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
        hint = " (cuda_bf16.h not found: pip install nvidia-cuda-runtime-cu12, or set CUDA_PATH)"
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
        _modules[key] = module
    return module


def get_kernel(name, precision, kernel):
    """One kernel function of kernels_cu/<name>.cu, e.g. get_kernel('gelu', 'bf16', 'gelu_forward_kernel')."""
    return load_module(name, precision).get_function(kernel)
