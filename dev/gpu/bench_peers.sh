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
# $OUT/peers_logs.tar.gz; other arguments go to dev/bench_peers.py. Environment as dev/gpu/check.sh's.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
OUT=${OUT:-$WORK/out}
mkdir -p "$WORK/logs" "$OUT"
llmc=()
dir=$(need_llmc) && llmc=(--llmc "$dir")
if [ "${1:-}" = --build-only ]; then
  [ ${#llmc[@]} -gt 0 ]
  exit
fi
d12=$(need_d12) || { echo "error: the d12 fixture was not written" >&2; exit 1; }
cd "$d12"
"$PY" "$ROOT/dev/bench_peers.py" "${llmc[@]}" --json "$OUT/bench_peers.json" --logs "$WORK/logs/peers" "$@"
status=$?
cp "$WORK/llm.c/build.log" "$WORK/logs/peers/llmc_build.log" 2>/dev/null
tar -czf "$OUT/peers_logs.tar.gz" -C "$WORK/logs" peers 2>/dev/null
exit $status
