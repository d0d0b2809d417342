#!/usr/bin/env bash
# Lays out what dev/bench_peers.py --llmc needs in the git-ignored folder .peers/ of this checkout, from git
# repositories of llm.c and of NVIDIA's cudnn-frontend (clones or bare mirrors): llm.c's Makefile, train_gpt2.cu,
# test_gpt2.cu and llmc/ into .peers/llm.c, the frontend's C++ headers into .peers/llm.c/cudnn-frontend/include
# (where llm.c's Makefile looks for them), and the commits taken into .peers/SOURCES. About 4 MB; nothing of it is
# committed.
#
#   bash dev/gpu/prepare_peers.sh LLMC_REPO CUDNN_FRONTEND_REPO [FRONTEND_REF]   # FRONTEND_REF default HEAD
#
# On the GPU machine (carry .peers): dev/gpu/build_llmc.sh .peers/llm.c builds train_gpt2cu there (or
# dev/bench_peers.py does when it is missing), then dev/bench_peers.py --llmc .peers/llm.c runs it.
set -euo pipefail
llmc=${1:?usage: prepare_peers.sh LLMC_REPO CUDNN_FRONTEND_REPO [FRONTEND_REF]}
frontend=${2:?usage: prepare_peers.sh LLMC_REPO CUDNN_FRONTEND_REPO [FRONTEND_REF]}
ref=${3:-HEAD}
root=$(git rev-parse --show-toplevel)
git -C "$root" check-ignore -q .peers/ || { echo "error: .peers/ is not ignored by git in $root" >&2; exit 1; }
out=$root/.peers
rm -rf "$out"
mkdir -p "$out/llm.c/cudnn-frontend"
git -C "$llmc" archive HEAD Makefile train_gpt2.cu test_gpt2.cu llmc | tar -x -C "$out/llm.c"
git -C "$frontend" archive "$ref" include | tar -x -C "$out/llm.c/cudnn-frontend"
{
  echo "llm.c $(git -C "$llmc" rev-parse HEAD)"
  echo "cudnn-frontend $(git -C "$frontend" rev-parse "$ref") ($(git -C "$frontend" describe --tags "$ref" 2>/dev/null || echo "$ref"))"
} > "$out/SOURCES"
cat "$out/SOURCES"
du -sh "$out"
echo 'then carry .peers to the GPU machine with the checkout'
