# cuDNN attention: op and model tests, test_gpt2cu.py bf16 with each attention, train -b 64 -t 1024, bench T=1024 with each attention at its largest B
# timeout: 200
source dev/gpu/lib.sh
d12=$(need_d12) || { figure "d12 fixture not written"; exit 1; }
status=0 results=()

echo "=== tests/test_attention_cudnn_gpu.py"
if "$PY" -m pytest -v -p no:cacheprovider -rfEs tests/test_attention_cudnn_gpu.py | tee "$WORK/cudnn_ops.log"; then
  results+=("ops: $(tail -n 1 "$WORK/cudnn_ops.log" | grep -oE '[0-9]+ passed' || echo '0 passed')")
else
  results+=("ops: FAIL ($(tail -n 1 "$WORK/cudnn_ops.log" | tr -d '=' | xargs))"); status=1
fi

cd "$d12"
for attention in cudnn llmc; do
  echo "=== python test_gpt2cu.py -e gpt2_d12_bf16.bin --attention $attention"
  "$PY" "$ROOT/test_gpt2cu.py" -e gpt2_d12_bf16.bin --attention $attention | tee "$WORK/last.log"
  if grep -q '^overall okay: 1' "$WORK/last.log"; then ok=ok; else ok=FAIL; status=1; fi
  results+=("test_gpt2cu $attention: $ok")
done

# the val shard holds fewer than 64*1024 tokens: validate on the train shard
echo "=== python train_gpt2cu.py -e gpt2_d12_bf16.bin -b 64 -t 1024 -x 2 --attention cudnn"
"$PY" "$ROOT/train_gpt2cu.py" -e gpt2_d12_bf16.bin -b 64 -t 1024 -x 2 -m 1 -s 2 -g 8 --attention cudnn \
  -j dev/data/tinyshakespeare/tiny_shakespeare_train.bin | tee "$WORK/train_cudnn.log"
rc=${PIPESTATUS[0]}
summary=$("$PY" "$ROOT/dev/gpu/trainlog.py" "$WORK/train_cudnn.log" --min-drop=-1e9)  # passes with a sample
ok=$?
workspace=$(grep -oE '[0-9]+ MiB workspace' "$WORK/train_cudnn.log")
if [ "$rc" -eq 0 ] && [ "$ok" -eq 0 ]; then
  summary=${summary%%, sample*}
  results+=("train -b 64: ${summary##*, }, $workspace")
else
  results+=("train -b 64: FAIL (exit $rc) $summary"); status=1
fi
cd "$ROOT"

cudnn=$(bench_fit "$d12/gpt2_d12_bf16.bin" 2 "--attention cudnn" 384 256 128 64) || { cudnn=${cudnn:-no B ran}; status=1; }
llmc=$(bench_fit "$d12/gpt2_d12_bf16.bin" 2 "--attention llmc" 192 128 64) || { llmc=${llmc:-no B ran}; status=1; }
figure "$(IFS=';'; echo "bench T=1024 cudnn $cudnn | llmc $llmc;${results[*]}")"
exit $status
