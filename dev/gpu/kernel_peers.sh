#!/usr/bin/env bash
# dev/kernel_peers.py on the GPU machine as one command: one training step's GPU time kernel by kernel, ours beside
# llm.c's (built once from a carried .peers/llm.c by lib.sh's need_llmc; without one, ours alone), on the d12
# fixture at B=64, T=1024 by default. About a minute or two: ncu times each of a few thousand kernels alone.
#
#   bash dev/gpu/kernel_peers.sh              # other arguments go to dev/kernel_peers.py (-b 4, --top 25, ...)
#
# Writes $OUT/kernel_peers.json, and the runs' output, ncu CSVs and llm.c's build log as $OUT/kernels_logs.tar.gz
# (lib.sh's peer_program). Environment as dev/gpu/check.sh's.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
OUT=${OUT:-$WORK/out}
peer_program kernel_peers.py kernels "$@"
