# dev/bench.py in bf16 at T=1024 with B=4 and with the largest of 64, 32, 16 that fits: ms/step, tok/s, MFU, peak memory
# timeout: 180
source dev/gpu/lib.sh
d12=$(need_d12) || { figure "d12 fixture not written"; exit 1; }
results=() status=0
bench() {  # bench B: one line of figures, or nothing when it failed (out of memory included)
  "$PY" dev/bench.py --device cuda -e "$d12/gpt2_d12_bf16.bin" -b "$1" -t 1024 --steps 10 > "$WORK/bench.log" 2>&1
  local rc=$?
  cat "$WORK/bench.log" >&2
  [ $rc -eq 0 ] && grep '^median' "$WORK/bench.log" | sed "s/^median of [0-9]* steps: /B=$1: /"
}
line=$(bench 4) && results+=("$line") || { results+=("B=4: FAIL"); status=1; }
big=""
for B in 64 32 16; do
  if line=$(bench $B); then big=$line; break; fi
done
[ -n "$big" ] && results+=("$big") || { results+=("B=16..64: FAIL"); status=1; }
figure "$(IFS=';'; echo "${results[*]}")"
exit $status
