#!/usr/bin/env bash
# Every GPU check in one command, for a machine lent for minutes: each step of dev/gpu/steps/ runs in its own
# process under its own timeout (a crash or a sticky CUDA error in one cannot hide the others), its log goes to
# $OUT/logs.tar.gz, and what failed (the lines naming each failure, then the log's last lines) and a summary table
# (step, PASS/FAIL, key figure, seconds) are printed last, sized to fit a 12,000-character reply.
#
#   bash dev/gpu/check.sh                  # every step, in file order
#   bash dev/gpu/check.sh kernels model    # the steps whose names start with these words
#
# A step is dev/gpu/steps/NN_name.sh: line 2 is "# timeout: <seconds>"; it sources dev/gpu/lib.sh, exits 0 to
# pass, and writes its key figure with `figure "..."`. Environment: PY (default python3), WORK (scratch shared
# by the steps, default /tmp/llmc-gpu-check), OUT (where logs go back from; default $WORK/out), CHECK_BUDGET_S
# (wall-clock budget of the whole run, default 540: a step is cut short or skipped so the table always prints;
# give the command a limit at least 30 s longer). The d12 fixture (lib.sh's need_d12) is written on the CPU in
# the background from the start, while the first steps use the GPU.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
export PY=${PY:-python3} WORK=${WORK:-/tmp/llmc-gpu-check} PYTHONUNBUFFERED=1
export OUT=${OUT:-$WORK/out}
BUDGET=${CHECK_BUDGET_S:-540}
LOGS=$WORK/logs
REPORT_BYTES=8500  # the failure digests together; the progress lines and the table take the rest of 12,000
# lines that say what failed: pytest's summary and error lines, Python exceptions, our one-line errors, the model
# test's verdicts, compute-sanitizer's findings, and each run's header inside a step log
KEY='^=== |^(FAILED|ERROR) |^E +[A-Za-z_.]*(Error|Exception)|^[A-Za-z_][A-Za-z0-9_.]*(Error|Exception)(: |$)|^error: |NOT OK|MISMATCH|Nondeterminism|overall okay|^=+ +(Invalid|Program hit|ERROR SUMMARY)|out of memory'
mkdir -p "$WORK" "$OUT" "$LOGS"
rm -rf "${LOGS:?}"/* "$WORK/d12.lock"

selected() {  # selected <step name> <patterns...>: no patterns selects everything
  local name=$1; shift
  [ $# -eq 0 ] && return 0
  for p in "$@"; do [[ $name == "$p"* ]] && return 0; done
  return 1
}

lines_within() {  # lines_within BYTES: whole lines of stdin, as many as fit
  awk -v max="$1" '{ n += length($0) + 1; if (n > max) exit; print }'
}

digest() {  # digest LOG BYTES: the log's failure lines (deduplicated), then its last lines
  local log=$1 bytes=$2 last
  last=$(grep -v '^\s*$' "$log" | tail -n 6 | cut -c1-200)
  grep -v '^\s*$' "$log" | head -n -6 | grep -E "$KEY" | awk '!seen[$0]++' | cut -c1-200 \
    | lines_within $((bytes - ${#last} - 40))
  echo "  [last lines]"
  echo "$last"
}

steps=()
for file in dev/gpu/steps/[0-9][0-9]_*.sh; do
  base=$(basename "$file" .sh)
  selected "${base#[0-9][0-9]_}" "$@" && steps+=("$file")
done

if [ ${#steps[@]} -eq 0 ]; then
  echo "no step of dev/gpu/steps/ matches: $*" >&2
  exit 2
fi

start_all=$SECONDS
fixture_pid=
if command -v flock > /dev/null && grep -q need_d12 "${steps[@]}"; then
  OMP_NUM_THREADS=8 timeout "$BUDGET" bash -c 'source dev/gpu/lib.sh && need_d12 > /dev/null' \
    > "$LOGS/d12_fixture.log" 2>&1 &
  fixture_pid=$!
fi

names=() verdicts=() figures=() times=() failed_logs=()
for file in "${steps[@]}"; do
  base=$(basename "$file" .sh)
  name=${base#[0-9][0-9]_}
  limit=$(sed -n '2s/^# timeout: *\([0-9]*\).*/\1/p' "$file")
  limit=${limit:-120}
  left=$((BUDGET - (SECONDS - start_all) - 20))
  log=$LOGS/$base.log
  names+=("$name")
  if [ "$left" -lt 15 ]; then
    verdicts+=(SKIP) figures+=("out of time budget ($BUDGET s)") times+=(0)
    continue
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  export FIGURE=$WORK/figure.$name STEP_LOG=$log
  rm -f "$FIGURE"
  echo "=== $name (timeout ${limit} s) ==="
  t0=$SECONDS
  timeout --kill-after=10 "$limit" bash "$file" > "$log" 2>&1
  rc=$?
  dt=$((SECONDS - t0))
  fig=$(head -c 300 "$FIGURE" 2> /dev/null | head -n 1)
  case $rc in
    0) verdict=PASS ;;
    124|137) verdict=FAIL; fig="timed out after ${limit} s${fig:+; $fig}"; echo "=== timed out after ${limit} s" >> "$log" ;;
    *) verdict=FAIL; fig="exit $rc${fig:+; $fig}" ;;
  esac
  echo "    $verdict in ${dt} s: $fig"
  verdicts+=("$verdict") figures+=("$fig") times+=("$dt")
  [ "$verdict" = PASS ] || failed_logs+=("$log")
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs 2> /dev/null
done
[ -n "$fixture_pid" ] && kill "$fixture_pid" 2> /dev/null
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs 2> /dev/null

{
  if [ ${#failed_logs[@]} -gt 0 ]; then
    share=$((REPORT_BYTES / ${#failed_logs[@]}))
    for log in "${failed_logs[@]}"; do
      echo "--- $(basename "$log"): what failed ---"
      digest "$log" "$share"
    done
  fi
} | tee "$OUT/failures.txt"

{
  echo
  echo "GPU check: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2> /dev/null | head -n 1), $((SECONDS - start_all)) s"
  printf '%-16s %-5s %7s  %s\n' step result seconds "key figure"
  for i in "${!names[@]}"; do
    printf '%-16s %-5s %7s  %s\n' "${names[$i]}" "${verdicts[$i]}" "${times[$i]}" "${figures[$i]}"
  done
} | tee "$OUT/summary.txt"
for verdict in "${verdicts[@]}"; do
  [ "$verdict" = PASS ] || exit 1
done
exit 0
