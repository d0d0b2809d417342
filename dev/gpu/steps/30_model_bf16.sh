# test_gpt2cu.py in bf16 on the d12 fixture with -r 0, -r 1, -r 2 and -ge 2: overall okay: 1 for each
# timeout: 240
source dev/gpu/lib.sh
d12=$(need_d12) || { figure "d12 fixture not written"; exit 1; }
cd "$d12"
status=0 results=()
for flags in "-r 0" "-r 1" "-r 2" "-ge 2"; do
  echo "=== python test_gpt2cu.py -e gpt2_d12_bf16.bin $flags"
  # shellcheck disable=SC2086
  "$PY" "$ROOT/test_gpt2cu.py" -e gpt2_d12_bf16.bin $flags | tee "$WORK/last.log"
  if grep -q '^overall okay: 1' "$WORK/last.log"; then results+=("${flags// /}:ok"); else results+=("${flags// /}:FAIL"); status=1; fi
done
figure "${results[*]}"
exit $status
