"""The install files resolve to one CUDA major each: requirements.txt and requirements-cpu.txt to CUDA 12,
requirements-cu13.txt to CUDA 13.

pip resolves each file in a throwaway venv (`pip install --dry-run --report`, installing nothing), and every
resolved package whose name or version carries a CUDA major is checked against the file's. The index may not serve
the wheels' metadata on its own (PEP 658), and then a dry run downloads every wheel it considers, gigabytes of CUDA
libraries: so the venv gets a pip whose `fast-deps` reads just the metadata out of each remote wheel (HTTP range
requests) and leaves the rest where it is. A CUDA 12 driver with CUDA 13 bindings fails at the first call, so a mix is a broken install even when
pip is content with it. Needs the package index: skipped offline, except on CI (CI=true), where that fails.
"""
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import REPO_ROOT

INSTALL_FILES = {"requirements.txt": 12, "requirements-cu13.txt": 13, "requirements-cpu.txt": 12}
PIP = "pip>=26,<27"  # a dry run with fast-deps that downloads no wheel (pip 23's still fetched them all at the end)
# CUDA toolkit wheels without a -cuNN suffix (the CUDA 13 line names them so): their version starts with the major
UNSUFFIXED_COMPONENTS = {"cuda-bindings", "cuda-toolkit", "nvidia-cublas", "nvidia-cuda-runtime", "nvidia-cuda-nvrtc",
                         "nvidia-cuda-cccl", "nvidia-cuda-crt", "nvidia-cuda-cupti", "nvidia-cuda-nvcc",
                         "nvidia-nvjitlink", "nvidia-nvvm", "nvidia-cufft", "nvidia-curand", "nvidia-cusolver",
                         "nvidia-cusparse", "nvidia-nvtx"}


def cuda_major(name, version):
    """The CUDA major a package belongs to (None for packages that serve every major, or no CUDA at all)."""
    name = name.lower().replace("_", "-")
    suffix = re.fullmatch(r".+-cu(\d+)", name) or re.fullmatch(r"cupy-cuda(\d+)x", name)
    if suffix:
        return int(suffix[1])
    if name in UNSUFFIXED_COMPONENTS:
        return int(version.split(".")[0])
    return None


def offenders(packages, major):
    """'name version (CUDA n)' for each resolved (name, version) of another CUDA major than `major`."""
    return [f"{name} {version} (CUDA {cuda_major(name, version)})" for name, version in packages
            if cuda_major(name, version) not in (None, major)]


def test_cuda_major_of_packages():
    cases = {("cupy-cuda12x", "14.2.0"): 12, ("cupy-cuda13x", "14.2.0"): 13, ("nvidia-nccl-cu13", "2.28.3"): 13,
             ("nvidia-cudnn-cu12", "9.28.0.42"): 12, ("cuda-bindings", "13.5.0"): 13, ("cuda-bindings", "12.9.10"): 12,
             ("cuda-toolkit", "13.0.2"): 13, ("nvidia-cublas", "13.1.0.3"): 13, ("nvidia_cuda_runtime", "13.0.96"): 13,
             ("cuda-core", "1.2.2"): None, ("cuda-pathfinder", "1.9.1"): None, ("nvidia-ml-py", "13.580.82"): None,
             ("numpy", "2.4.6"): None, ("nvidia-cudnn-frontend", "1.32.0"): None}
    assert {case: cuda_major(*case) for case in cases} == cases


def test_a_mix_of_majors_is_caught():
    """What pip resolved for the CUDA 12 install before cuda-bindings was pinned: cuda-bindings of the 13 line."""
    resolved = [("cupy-cuda12x", "14.2.0"), ("cuda-pathfinder", "1.9.1"), ("nvmath-python", "1.0.0"),
                ("nvidia-cublas-cu12", "12.9.3.13"), ("nvidia-cuda-nvrtc-cu12", "12.9.86"),
                ("nvidia-nccl-cu12", "2.32.3"), ("cuda-core", "1.2.2"), ("cuda-bindings", "13.5.0")]
    assert offenders(resolved, 12) == ["cuda-bindings 13.5.0 (CUDA 13)"]
    assert offenders(resolved[:-1], 12) == []


def _resolve(requirements, folder):
    """[(name, version)] pip would install for `requirements` into a fresh venv; raises RuntimeError with pip's
    last lines when it cannot resolve (offline included)."""
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    report = folder / "report.json"
    for args in (["install", PIP], ["install", "--use-feature=fast-deps", "--dry-run", "--report", str(report),
                                    "-r", str(REPO_ROOT / requirements)]):
        proc = subprocess.run(pip + args, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"pip {' '.join(args[:2])} for {requirements} failed: "
                               + " ".join(proc.stderr.strip().splitlines()[-3:]))
    return [(item["metadata"]["name"], item["metadata"]["version"]) for item in json.loads(report.read_text())["install"]]


@pytest.fixture(scope="module")
def resolved(tmp_path_factory):
    """{install file: resolved packages}, the files resolved side by side (each takes under a minute)."""
    folders = {name: tmp_path_factory.mktemp(name.replace(".", "_")) for name in INSTALL_FILES}
    with ThreadPoolExecutor(len(INSTALL_FILES)) as pool:
        futures = {name: pool.submit(_resolve, name, folder) for name, folder in folders.items()}
        results, errors = {}, []
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except RuntimeError as e:
                errors.append(str(e))
    if errors:
        if os.environ.get("CI") == "true":
            pytest.fail("; ".join(errors))
        pytest.skip("; ".join(errors))
    return results


@pytest.mark.parametrize("requirements", list(INSTALL_FILES))
def test_install_file_resolves_to_one_cuda_major(resolved, requirements):
    major = INSTALL_FILES[requirements]
    packages = resolved[requirements]
    assert offenders(packages, major) == [], f"{requirements} mixes CUDA majors: {packages}"
    names = {name.lower() for name, _ in packages}
    assert f"cupy-cuda{major}x" in names, packages
    if requirements != "requirements-cpu.txt":  # the GPU installs: bindings of the driver's major, NCCL
        assert {"nvmath-python", "cuda-bindings", f"nvidia-nccl-cu{major}"} <= names, packages
