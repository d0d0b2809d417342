"""Every kernels_cu/*.cu compiles with NVRTC for sm_80 and sm_90 in bf16 and fp32 (tier 3: no GPU needed).

The same options as cupy.RawModule uses on a GPU (llmc_py.cuda.nvrtc_options plus CuPy's own additions), so a
kernel that fails here would fail at load time on the GPU. Without NVRTC installed the tests skip, except on CI
(CI=true), where that is a failure: requirements-cpu.txt installs it.
"""
import os
import sys

import pytest

from llmc_py import LlmcError
from llmc_py.cuda import CHECK_ARCHS, PRECISION_DEFINES, compile_check, kernel_files


def _nvrtc_missing():
    """None when NVRTC can compile here, else the reason."""
    try:
        from cupy.cuda import nvrtc
        nvrtc.getVersion()
    except Exception as e:  # ImportError, or libnvrtc not found by CuPy
        return f"NVRTC unavailable ({type(e).__name__}: {e}); pip install -r requirements-cpu.txt"
    return None


@pytest.fixture(scope="module")
def nvrtc_ready():
    reason = _nvrtc_missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def test_kernel_files_found():
    names = {p.name for p in kernel_files()}
    for layer in ("encoder", "layernorm", "attention", "gelu", "matmul", "fused_classifier", "adamw",
                  "global_norm", "cast"):
        assert f"{layer}.cu" in names


def test_import_does_not_load_cupy():
    import subprocess
    code = "import sys, llmc_py.cuda; assert 'cupy' not in sys.modules, 'llmc_py.cuda imported cupy'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


@pytest.mark.parametrize("precision", list(PRECISION_DEFINES))
@pytest.mark.parametrize("arch", CHECK_ARCHS)
@pytest.mark.parametrize("path", kernel_files(), ids=lambda p: p.name)
def test_kernel_compiles(nvrtc_ready, path, arch, precision):
    try:
        compile_check(path, precision, arch)
    except LlmcError as e:
        pytest.fail(str(e), pytrace=False)


def test_compile_failure_reports_log(nvrtc_ready, tmp_path):
    bad = tmp_path / "bad.cu"
    bad.write_text('#include "common.cuh"\nextern "C" __global__ void k(floatX* x) { x[0] = no_such_name; }\n')
    with pytest.raises(LlmcError, match="no_such_name"):
        compile_check(bad, "fp32", "90")
