"""Import `cp` from here in GPU-only test modules: the importing module is skipped cleanly when CuPy is
missing or no CUDA device answers (no driver, or a CuPy built for another CUDA)."""
import pytest

cp = pytest.importorskip("cupy")


def _device_count():
    try:
        return cp.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


if _device_count() == 0:
    pytest.skip("no usable CUDA device", allow_module_level=True)
