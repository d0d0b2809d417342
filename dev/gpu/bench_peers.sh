#!/usr/bin/env bash
# The full side-by-side benchmark (dev/bench_peers.py) on the GPU machine as one command, a call of its own (about
# 6-9 minutes; dev/gpu/check.sh's 60_peers step runs a short version of it):
#
#   bash dev/gpu/bench_peers.sh                # B=4 and 64, T=1024, steps 10-30: ours (3 ways), PyTorch, llm.c
#   bash dev/gpu/bench_peers.sh --build-only   # only build llm.c, e.g. in the background while check.sh runs
#
# llm.c comes from a carried .peers/llm.c (dev/gpu/prepare_peers.sh) and is built in a copy at $WORK/llm.c, outside
# the carried folder, so that a later call on the same machine finds it built (lib.sh's need_llmc, which also builds
# its test_gpt2cu for dev/gpu/llmc_model_test.sh). Writes $OUT/bench_peers.json and the runs' logs as
# $OUT/peers_logs.tar.gz (lib.sh's peer_program); other arguments go to dev/bench_peers.py. Environment as
# dev/gpu/check.sh's.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
OUT=${OUT:-$WORK/out}
if [ "${1:-}" = --build-only ]; then
  need_llmc > /dev/null
  exit
fi
peer_program bench_peers.py peers "$@"
