# train_gpt2cu.py twice, same flags (d12, bf16, 5 steps, checkpoint at 5): identical checkpoint and main.log bytes
# timeout: 120
source dev/gpu/lib.sh
d12=$(need_d12) || { figure "d12 fixture not written"; exit 1; }
cd "$d12"
for run in a b; do
  out=$WORK/determinism_$run
  rm -rf "$out"
  echo "=== run $run: python train_gpt2cu.py -e gpt2_d12_bf16.bin -b 4 -t 256 -x 5 -n 5 -v 5 -m 2 -s 0 -o $out"
  if ! "$PY" "$ROOT/train_gpt2cu.py" -e gpt2_d12_bf16.bin -b 4 -t 256 -x 5 -n 5 -v 5 -m 2 -s 0 -o "$out"; then
    figure "run $run failed"
    exit 1
  fi
done
status=0
names=$(ls "$WORK/determinism_a")
[ "$(echo "$names" | wc -l)" -eq 4 ] || { status=1; figure "expected DONE, model, state, main.log; found ${names//$'\n'/ }"; }
for name in $names; do
  cmp "$WORK/determinism_a/$name" "$WORK/determinism_b/$name" || { status=1; figure "$name differs"; }
done
[ $status -eq 0 ] && figure "2 bf16 runs x 5 steps: ${names//$'\n'/ } identical"
cat "$WORK/determinism_a/main.log"
rm -rf "$WORK"/determinism_a "$WORK"/determinism_b  # 2 x 1.7 GB of checkpoints
exit $status
