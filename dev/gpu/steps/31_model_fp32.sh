# test_gpt2cu.py in fp32 on the d12 fixture with each --matmul variant (cublas, custom, fp16fc): overall okay: 1
# timeout: 200
source dev/gpu/lib.sh
d12=$(need_d12) || { figure "d12 fixture not written"; exit 1; }
cd "$d12"
status=0 results=()
for matmul in cublas custom fp16fc; do
  echo "=== python test_gpt2cu.py --precision fp32 -e gpt2_d12.bin --matmul $matmul"
  "$PY" "$ROOT/test_gpt2cu.py" --precision fp32 -e gpt2_d12.bin --matmul $matmul | tee "$WORK/last.log"
  if grep -q '^overall okay: 1' "$WORK/last.log"; then results+=("$matmul:ok"); else results+=("$matmul:FAIL"); status=1; fi
done
figure "${results[*]}"
exit $status
