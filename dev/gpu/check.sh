#!/usr/bin/env bash
# Every GPU check in one command, for a machine lent for minutes: each step of dev/gpu/steps/ runs in its own
# process under its own timeout (a crash or a sticky CUDA error in one cannot hide the others), its log goes to
# $OUT, and a summary table (step, PASS/FAIL, key figure, seconds) is printed last.
#
#   bash dev/gpu/check.sh                  # every step, in file order
#   bash dev/gpu/check.sh kernels model    # the steps whose names start with these words
#
# A step is dev/gpu/steps/NN_name.sh: line 2 is "# timeout: <seconds>"; it sources dev/gpu/lib.sh, exits 0 to
# pass, and writes its key figure with `figure "..."`. Environment: PY (default python3), WORK (scratch shared
# by the steps, default /tmp/llmc-gpu-check), OUT (where logs go back from; default $WORK/out), CHECK_BUDGET_S
# (wall-clock budget of the whole run, default 540: a step is cut short or skipped so the table always prints).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
export PY=${PY:-python3} WORK=${WORK:-/tmp/llmc-gpu-check} PYTHONUNBUFFERED=1
export OUT=${OUT:-$WORK/out}
BUDGET=${CHECK_BUDGET_S:-540}
LOGS=$WORK/logs
mkdir -p "$WORK" "$OUT" "$LOGS"
rm -f "$LOGS"/*

selected() {  # selected <step name> <patterns...>: no patterns selects everything
  local name=$1; shift
  [ $# -eq 0 ] && return 0
  for p in "$@"; do [[ $name == "$p"* ]] && return 0; done
  return 1
}

start_all=$SECONDS
rows=()
failed_logs=()
for file in dev/gpu/steps/[0-9][0-9]_*.sh; do
  base=$(basename "$file" .sh)
  name=${base#[0-9][0-9]_}
  selected "$name" "$@" || continue
  limit=$(sed -n '2s/^# timeout: *\([0-9]*\).*/\1/p' "$file")
  limit=${limit:-120}
  left=$((BUDGET - (SECONDS - start_all) - 20))
  log=$LOGS/$base.log
  if [ "$left" -lt 15 ]; then
    rows+=("$name|SKIP|out of time budget ($BUDGET s)|0")
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
  fig=$(head -c 300 "$FIGURE" 2>/dev/null | head -n 1)
  case $rc in
    0) verdict=PASS ;;
    124|137) verdict=FAIL; fig="timed out after ${limit} s${fig:+; $fig}" ;;
    *) verdict=FAIL; fig="exit $rc${fig:+; $fig}" ;;
  esac
  echo "    $verdict in ${dt} s: $fig"
  rows+=("$name|$verdict|$fig|$dt")
  [ "$verdict" = PASS ] || failed_logs+=("$log")
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs 2>/dev/null
done

{
  for log in "${failed_logs[@]}"; do
    echo "--- last lines of $(basename "$log") ---"
    grep -v '^\s*$' "$log" | tail -n 12 | cut -c1-220
  done
} | tee "$OUT/failures.txt"

{
  echo
  echo "GPU check: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1), $((SECONDS - start_all)) s"
  printf '%-16s %-5s %7s  %s\n' step result seconds "key figure"
  for row in "${rows[@]}"; do
    IFS='|' read -r name verdict fig dt <<< "$row"
    printf '%-16s %-5s %7s  %s\n' "$name" "$verdict" "$dt" "$fig"
  done
} | tee "$OUT/summary.txt"
grep -q ' FAIL ' "$OUT/summary.txt" && exit 1
exit 0
