# environment: GPU, driver, CUDA runtime, cupy, nvmath, cuBLASLt, NCCL, cuDNN; every kernels_cu file loaded for this GPU in both precisions
# timeout: 150
source dev/gpu/lib.sh
nvidia-smi
"$PY" - <<'PY'
import importlib.metadata as md
import os
import sys
import time

from llmc_py import cuda


def version(package):
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return "not installed"


info = cuda.init_device(0)
print(f"GPU 0: {info.name}, sm_{info.compute_capability}, {info.num_sms} SMs, {info.total_memory >> 20} MiB")
line = cuda.versions_line()
print(line)
for package in ("cupy-cuda13x", "cupy-cuda12x", "nvmath-python", "cuda-bindings", "cuda-core", "nvidia-cudnn-cu13",
                "nvidia-cudnn-cu12", "nvidia-cudnn-frontend", "nvidia-nccl-cu13", "nvidia-nccl-cu12", "ml-dtypes",
                "numpy", "torch"):
    print(f"{package}: {version(package)}")
from llmc_py.blas import _import_bindings  # noqa: E402

cublas, lt = _import_bindings()
print(f"cuBLASLt {lt.get_version()}")
try:
    import cudnn  # noqa: F401 (why it does not load, when it does not: the versions line says only n/a)
except Exception as e:  # reported, not fatal here: the attention step decides
    print(f"cuDNN frontend: {type(e).__name__}: {e}")
print(f"CUDA runtime headers (cuda_bf16.h) for NVRTC: {cuda.cuda_include_dir()}")
loaded, failed = 0, []
for path in cuda.kernel_files():  # every module, even after a failure: one run shows them all
    for precision in cuda.PRECISION_DEFINES:
        t0 = time.perf_counter()
        try:
            cuda.load_module(path.stem, precision)
        except Exception as e:
            failed.append(f"{path.stem}/{precision}")
            print(f"FAILED to load {path.name} {precision}: {type(e).__name__}: {e}")
            continue
        loaded += 1
        print(f"loaded {path.name:<22} {precision} in {time.perf_counter() - t0:.2f} s")
with open(os.environ["FIGURE"], "w") as f:
    f.write(f"{info.name} sm_{info.compute_capability}; {line}; cuBLASLt {lt.get_version()}; {loaded} modules loaded"
            f"{'; FAILED: ' + ' '.join(failed) if failed else ''}\n")
sys.exit(1 if failed else 0)
PY
