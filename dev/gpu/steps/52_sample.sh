# sample_gpt2.py on the d12 fixture: a prompt's greedy (--top-k 1) continuation in fp32 on the GPU is the CPU's, token for token; bf16 samples too
# timeout: 120
source dev/gpu/lib.sh
d12=$(need_d12) || { figure "d12 fixture not written"; exit 1; }
cd "$d12"
args=(-e gpt2_d12.bin --prompt "First Citizen: Before we proceed any further, hear me speak." -g 24 --top-k 1)
run() {  # run NAME FLAGS...: sample_gpt2.py into $WORK/sample_NAME.txt, shown in the log; prints its seconds
  local name=$1 t0=$SECONDS
  shift
  "$PY" "$ROOT/sample_gpt2.py" "$@" > "$WORK/sample_$name.txt" 2>&1
  local rc=$?
  echo "=== $name (exit $rc, $((SECONDS - t0)) s)" >&2
  cat "$WORK/sample_$name.txt" >&2
  echo >&2
  [ $rc -eq 0 ] && echo $((SECONDS - t0))
}
cpu_s=$(run cpu "${args[@]}" --device cpu) || { figure "the CPU run failed"; exit 1; }
gpu_s=$(run gpu_fp32 "${args[@]}" --device cuda --precision fp32) || { figure "the fp32 GPU run failed"; exit 1; }
bf16_s=$(run gpu_bf16 -e gpt2_d12_bf16.bin --prompt "First Citizen:" -g 16 --top-k 40 --temperature 0.8 \
  --device cuda) || { figure "the bf16 GPU run failed"; exit 1; }
# the samples (everything after the settings line) must be byte for byte the same
if cmp -s <(tail -n +2 "$WORK/sample_cpu.txt") <(tail -n +2 "$WORK/sample_gpu_fp32.txt"); then
  figure "fp32 GPU greedy tokens = CPU's (24 after a 14-token prompt; cpu ${cpu_s} s, gpu ${gpu_s} s); bf16 sampled in ${bf16_s} s"
else
  diff <(tail -n +2 "$WORK/sample_cpu.txt") <(tail -n +2 "$WORK/sample_gpu_fp32.txt") | cut -c1-300
  figure "fp32 GPU greedy tokens differ from the CPU's (see the log)"
  exit 1
fi
