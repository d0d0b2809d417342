"""Compiles every kernels_cu/*.cu with NVRTC for sm_80 and sm_90 in bf16 and fp32; no GPU needed.

Prints one line per (file, arch, precision) with OK and the compile time, then the total; on any failure prints
NVRTC's log and exits 1. The same check runs in tests/test_kernels_compile.py.
Usage: python dev/check_kernels.py [--arch 80 90] [--precision bf16 fp32] [file.cu ...]
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmc_py import LlmcError  # noqa: E402
from llmc_py.cuda import CHECK_ARCHS, PRECISION_DEFINES, compile_check, kernel_files  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="kernel files (default: every kernels_cu/*.cu)")
    parser.add_argument("--arch", nargs="+", default=list(CHECK_ARCHS), help="compute capabilities, e.g. 80 90")
    parser.add_argument("--precision", nargs="+", default=list(PRECISION_DEFINES), choices=list(PRECISION_DEFINES))
    args = parser.parse_args()
    files = args.files or kernel_files()
    failures = 0
    start = time.perf_counter()
    for path in files:
        for arch in args.arch:
            for precision in args.precision:
                t0 = time.perf_counter()
                try:
                    log = compile_check(path, precision, arch)
                except LlmcError as e:
                    failures += 1
                    print(f"{path.name:22s} sm_{arch} {precision} FAILED {time.perf_counter() - t0:5.2f} s\n{e}")
                    continue
                print(f"{path.name:22s} sm_{arch} {precision} OK {time.perf_counter() - t0:5.2f} s")
                if log.strip():
                    print(log.strip())
    total = len(files) * len(args.arch) * len(args.precision)
    print(f"{total - failures}/{total} compiled in {time.perf_counter() - start:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
