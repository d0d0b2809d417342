#!/usr/bin/env bash
# Builds llm.c's train_gpt2cu (bf16, cuDNN attention) in an llm.c checkout, on a machine whose CUDA libraries may
# come from pip wheels rather than a CUDA toolkit, for dev/bench_peers.py --llmc DIR; and, when named, its model
# test test_gpt2cu, the same way (dev/gpu/llmc_model_test.sh runs it on our d12 fixture).
#
#   bash dev/gpu/build_llmc.sh .peers/llm.c                          # the folder dev/gpu/prepare_peers.sh lays out
#   bash dev/gpu/build_llmc.sh .peers/llm.c train_gpt2cu test_gpt2cu # the targets to build (default train_gpt2cu)
#
# It finds nvcc, then the headers and libraries of cuDNN, cuBLAS/cuBLASLt and NVRTC (cudnn-frontend 1.2x compiles
# NVRTC calls into cudnn_att.cpp): in CUDA_LIB_ROOTS (colon-separated folders searched first), the toolkit beside
# nvcc, and the site-packages of $PY (default python3), where the wheels put them (nvidia/cudnn/{include,lib},
# nvidia/cu13/{include,lib}, ...). Wheels ship versioned names only (libcudnn.so.9), so DIR/.links holds
# unversioned links for the linker, and the binary gets an rpath to the real folders. Then llm.c's own Makefile
# runs with everything on its command line (where make is missing, the two nvcc commands of its rule run):
#   make <targets> USE_CUDNN=1 NO_MULTI_GPU=1 NO_USE_MPI=1 NO_OMP=1 GPU_COMPUTE_CAPABILITY=<cc> \
#     NVCC_INCLUDES="-Icudnn-frontend/include -I<cudnn> -I<cublas> -I<nvrtc>" \
#     NVCC_LDFLAGS="-L<DIR>/.links -lcublas -lcublasLt -lcudnn -lnvrtc -Xlinker -rpath=<lib folders>"
# Two adaptations are made to the copy first (never to a committed file): with CUDA 13, cudaMemAdvise takes a
# cudaMemLocation, so the one call llm.c makes (in its out-of-memory fallback) passes the host location; and
# llm.c's optional NVML use (GPU logging with -lg, unused here) is switched off, so no libnvidia-ml or nvml.h of
# a particular version is needed.
set -euo pipefail
dir=${1:?usage: build_llmc.sh LLMC_DIR [TARGET...]}
shift
targets=("${@:-train_gpt2cu}")
PY=${PY:-python3}
[ -d "$dir/cudnn-frontend/include" ] || {
  echo "error: $dir: expected an llm.c checkout with cudnn-frontend/include inside (dev/gpu/prepare_peers.sh)" >&2
  exit 1
}
for target in "${targets[@]}"; do
  case $target in
    train_gpt2cu|test_gpt2cu) [ -f "$dir/${target%cu}.cu" ] \
      || { echo "error: $dir/${target%cu}.cu: missing (dev/gpu/prepare_peers.sh lays it out)" >&2; exit 1; } ;;
    *) echo "error: $target: expected train_gpt2cu or test_gpt2cu" >&2; exit 1 ;;
  esac
done
dir=$(cd "$dir" && pwd)

nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
[ -n "$nvcc" ] || { echo "error: nvcc not found (PATH, /usr/local/cuda/bin)" >&2; exit 1; }
cuda_major=$("$nvcc" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '. ' || true)
cc=${cc:-90}
toolkit=$(cd "$(dirname "$(readlink -f "$nvcc")")/.." && pwd)

roots=()
IFS=: read -r -a extra <<< "${CUDA_LIB_ROOTS:-}"
for r in "${extra[@]}"; do [ -n "$r" ] && roots+=("$r"); done
roots+=("$toolkit")
while read -r site; do [ -d "$site/nvidia" ] && roots+=("$site/nvidia"); done \
  < <("$PY" -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null || true)

find_first() {  # find_first NAME: the first file of that name (a glob) under the roots, or nothing
  local r hit
  for r in "${roots[@]}"; do
    hit=$(find -L "$r" -maxdepth 4 -name "$1" \( -type f -o -type l \) 2>/dev/null | sort | head -n 1)
    [ -n "$hit" ] && { echo "$hit"; return 0; }
  done
  return 1
}

includes=(-Icudnn-frontend/include)
for header in cudnn.h cublasLt.h nvrtc.h; do
  path=$(find_first "$header") || { echo "error: $header not found under ${roots[*]}" >&2; exit 1; }
  includes+=("-I$(dirname "$path")")
done
mkdir -p "$dir/.links"
libdirs=()
for lib in cublas cublasLt cudnn nvrtc; do
  path=$(find_first "lib$lib.so") || path=$(find_first "lib$lib.so.[0-9]*") \
    || { echo "error: lib$lib.so not found under ${roots[*]}" >&2; exit 1; }
  path=$(readlink -f "$path")
  ln -sf "$path" "$dir/.links/lib$lib.so"
  libdirs+=("$(dirname "$path")")
  echo "lib$lib: $path"
done
rpath=$(printf '%s\n' "${libdirs[@]}" | awk '!seen[$0]++' | paste -sd: -)
echo "nvcc: $nvcc (CUDA $cuda_major), sm_$cc; includes: ${includes[*]}"

cd "$dir"
if [ "${cuda_major:-0}" -ge 13 ]; then
  sed -i 's/cudaMemAdviseSetPreferredLocation, cudaCpuDeviceId)/cudaMemAdviseSetPreferredLocation, cudaMemLocation{cudaMemLocationTypeHost, 0})/' \
    llmc/cuda_utils.cuh
fi
sed -i 's/^#if __has_include(<nvml.h>)$/#if 0/' llmc/mfu.h
ldflags="-L$dir/.links -lcublas -lcublasLt -lcudnn -lnvrtc -Xlinker -rpath=$rpath"
if command -v make > /dev/null; then
  # -k: one target failing does not stop the others (each is checked below)
  PATH="$(dirname "$nvcc"):$PATH" make -k -j "${#targets[@]}" "${targets[@]}" USE_CUDNN=1 NO_MULTI_GPU=1 NO_USE_MPI=1 NO_OMP=1 \
    GPU_COMPUTE_CAPABILITY="$cc" NVCC_INCLUDES="${includes[*]}" NVCC_LDFLAGS="$ldflags"
else  # no make: the commands its rules run with these settings (cudnn_att.o first, as their shared input)
  flags=(--threads=0 -t=0 --use_fast_math -std=c++17 -O3 --generate-code "arch=compute_$cc,code=[compute_$cc,sm_$cc]"
         -DENABLE_CUDNN -DENABLE_BF16)
  mkdir -p build
  "$nvcc" -c "${flags[@]}" llmc/cudnn_att.cpp "${includes[@]}" -o build/cudnn_att.o
  for target in "${targets[@]}"; do
    # shellcheck disable=SC2086
    "$nvcc" "${flags[@]}" "${target%cu}.cu" build/cudnn_att.o $ldflags "${includes[@]}" -o "$target"
  done
fi
ls -l "${targets[@]}"
