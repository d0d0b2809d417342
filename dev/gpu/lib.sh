# Sourced by every step of dev/gpu/check.sh: the shared paths and helpers.
set -uo pipefail
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
PY=${PY:-python3}
WORK=${WORK:-/tmp/llmc-gpu-check}
FIGURE=${FIGURE:-/dev/null}
DATA=${LLMC_TEST_DATA:-$ROOT/../shared/data}
export LLMC_GPT2_TIKTOKEN=${LLMC_GPT2_TIKTOKEN:-$DATA/gpt2/gpt2.tiktoken}
cd "$ROOT"

# figure TEXT: the step's key figure, one short line for the summary table (the last call wins)
figure() { printf '%s\n' "$*" > "$FIGURE"; }

# need_d12: echoes the folder holding the d12 random-init model files (fp32, bf16, debug state, tokenizer) and
# the tinyshakespeare shards, laid out like a user's run folder; written once on this machine (a rerun on the same
# machine reuses it). check.sh starts writing it in the background; a lock makes a step that needs it wait.
need_d12() {
  local dir=$WORK/d12
  {
    if command -v flock > /dev/null; then flock 9; fi
    if [ ! -f "$dir/.complete" ]; then
      echo "writing the d12 fixture into $dir" >&2
      rm -rf "$dir" && mkdir -p "$dir" || return 1
      "$PY" dev/data/tinyshakespeare.py --input "$DATA/tinyshakespeare/input.txt" \
        --out-dir "$dir/dev/data/tinyshakespeare" >&2 || return 1
      (cd "$dir" && "$PY" "$ROOT/train_gpt2.py" --model d12 --num_iterations 0 --device cpu) >&2 || return 1
      touch "$dir/.complete"
    fi
  } 9> "$WORK/d12.lock"
  echo "$dir"
}

# need_llmc: echoes the folder of llm.c's build, $WORK/llm.c, made once on this machine from a carried .peers/llm.c
# (dev/gpu/prepare_peers.sh): train_gpt2cu for the peer benchmarks, and test_gpt2cu for dev/gpu/llmc_model_test.sh
# (its output in $WORK/llm.c/build.log). Returns 1 when no llm.c was carried or train_gpt2cu did not build. A lock
# makes a second caller wait for a build under way (e.g. one started in the background).
need_llmc() {
  local dir=$WORK/llm.c
  mkdir -p "$WORK" || return 1
  {
    if command -v flock > /dev/null; then flock 9; fi
    if [ -f "$ROOT/.peers/llm.c/train_gpt2.cu" ] && [ ! -f "$dir/.built" ]; then
      rm -rf "$dir" && cp -r "$ROOT/.peers/llm.c" "$dir" || return 1
      echo "building llm.c's train_gpt2cu and test_gpt2cu in $dir" >&2
      bash "$ROOT/dev/gpu/build_llmc.sh" "$dir" train_gpt2cu test_gpt2cu > "$dir/build.log" 2>&1
      if [ -x "$dir/train_gpt2cu" ]; then
        touch "$dir/.built"
      else
        echo "llm.c build failed; last lines of $dir/build.log:" >&2
        tail -n 20 "$dir/build.log" >&2
      fi
    fi
  } 9> "$WORK/llmc.lock"
  [ -f "$dir/.built" ] && echo "$dir"
}

# peer_program PROGRAM NAME ARGS...: dev/PROGRAM (bench_peers.py, kernel_peers.py) in the d12 fixture folder, with
# --llmc when need_llmc has llm.c built, --json $OUT/PROGRAM's stem.json, --logs $WORK/logs/NAME and ARGS; then the
# llm.c build's log joins the runs' logs, which go back as $OUT/NAME_logs.tar.gz. Returns the program's status.
peer_program() {
  local program=$1 name=$2 dir d12 status llmc=()
  shift 2
  mkdir -p "$WORK/logs" "$OUT"
  dir=$(need_llmc) && llmc=(--llmc "$dir")
  d12=$(need_d12) || { echo "error: the d12 fixture was not written" >&2; return 1; }
  (cd "$d12" && "$PY" "$ROOT/dev/$program" "${llmc[@]}" --json "$OUT/${program%.py}.json" \
    --logs "$WORK/logs/$name" "$@")
  status=$?
  cp "$WORK/llm.c/build.log" "$WORK/logs/$name/llmc_build.log" 2>/dev/null
  tar -czf "$OUT/${name}_logs.tar.gz" -C "$WORK/logs" "$name" 2>/dev/null
  return $status
}

# bench_fit MODEL STEPS FLAGS B...: dev/bench.py on the GPU at T=1024 with MODEL, STEPS timed steps and FLAGS (words)
# for each B in turn, largest first, until one runs (out of memory ends the larger ones). Echoes that run's figures
# in one short line, "B=64: 21.0 ms/step, 195048 tok/s, 40.1% bf16 MFU, 3000 MiB"; returns 1 when no B ran. Every
# run's output goes to the step's log.
bench_fit() {
  local model=$1 steps=$2 flags=$3 B rc line
  shift 3
  for B in "$@"; do
    echo "=== python dev/bench.py -b $B -t 1024 --steps $steps $flags" >&2
    # shellcheck disable=SC2086
    "$PY" dev/bench.py --device cuda -e "$model" -b "$B" -t 1024 --steps "$steps" $flags > "$WORK/bench.log" 2>&1
    rc=$?
    cat "$WORK/bench.log" >&2
    [ $rc -eq 0 ] || continue
    line=$(sed -nE "s/^median of [0-9]+ steps: (.*) ms\/step \| (.*) tok\/s \| (.*) \| ([0-9]+) MiB device memory used$/B=$B: \1 ms\/step, \2 tok\/s, \3, \4 MiB/p" "$WORK/bench.log")
    if [ -n "$line" ]; then echo "$line"; return 0; fi
    echo "B=$B: dev/bench.py printed no median line"
    return 1
  done
  return 1
}
