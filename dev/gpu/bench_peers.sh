#!/usr/bin/env bash
# The full side-by-side benchmark (dev/bench_peers.py) on the GPU machine as one command, a call of its own (about
# 6-9 minutes; dev/gpu/check.sh's 60_peers step runs a short version of it):
#
#   bash dev/gpu/bench_peers.sh                # B=4 and 64, T=1024, steps 10-30: ours (3 ways), PyTorch, llm.c
#   bash dev/gpu/bench_peers.sh --build-only   # only build llm.c, e.g. in the background while check.sh runs
#
# The build makes llm.c's test_gpt2cu too, for dev/gpu/llmc_model_test.sh.
#
# llm.c comes from a carried .peers/llm.c (dev/gpu/prepare_peers.sh) and is built in a copy at $WORK/llm.c, outside
# the carried folder, so that a later call on the same machine finds it built ($WORK/llm.c/.built marks a finished
# build; the build's output is $WORK/llm.c/build.log). Writes $OUT/bench_peers.json and the runs' logs as
# $OUT/peers_logs.tar.gz; other arguments go to dev/bench_peers.py. Environment as dev/gpu/check.sh's.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
OUT=${OUT:-$WORK/out}
mkdir -p "$WORK/logs" "$OUT"
if [ -f "$ROOT/.peers/llm.c/train_gpt2.cu" ] && [ ! -f "$WORK/llm.c/.built" ]; then
  rm -rf "$WORK/llm.c" && cp -r "$ROOT/.peers/llm.c" "$WORK/llm.c"
  echo "building llm.c's train_gpt2cu and test_gpt2cu in $WORK/llm.c"
  bash "$ROOT/dev/gpu/build_llmc.sh" "$WORK/llm.c" train_gpt2cu test_gpt2cu > "$WORK/llm.c/build.log" 2>&1
  if [ -x "$WORK/llm.c/train_gpt2cu" ]; then  # the benchmark needs train_gpt2cu alone
    touch "$WORK/llm.c/.built"
  else
    echo "llm.c build failed; last lines of $WORK/llm.c/build.log:"
    tail -n 20 "$WORK/llm.c/build.log"
  fi
fi
if [ "${1:-}" = --build-only ]; then
  [ -f "$WORK/llm.c/.built" ]
  exit
fi
llmc=()
[ -f "$WORK/llm.c/.built" ] && llmc=(--llmc "$WORK/llm.c")
d12=$(need_d12) || { echo "error: the d12 fixture was not written" >&2; exit 1; }
cd "$d12"
"$PY" "$ROOT/dev/bench_peers.py" "${llmc[@]}" --json "$OUT/bench_peers.json" --logs "$WORK/logs/peers" "$@"
status=$?
cp "$WORK/llm.c/build.log" "$WORK/logs/peers/llmc_build.log" 2>/dev/null
tar -czf "$OUT/peers_logs.tar.gz" -C "$WORK/logs" peers 2>/dev/null
exit $status
