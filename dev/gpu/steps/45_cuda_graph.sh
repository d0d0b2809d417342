# train_gpt2cu.py on the d12 fixture (bf16, T=1024) with --cuda-graph 0 and 1, without and with accumulation (-d, -r 2 -ge 2): same step lines, byte-identical model files, ms/step of both
# timeout: 300
source dev/gpu/lib.sh
d12=$(need_d12) || { figure "d12 fixture not written"; exit 1; }
cd "$d12"
status=0 results=()
train() {  # train NAME GRAPH FLAGS...: one run into $WORK/graph/NAME.GRAPH (log beside it); checkpoint at the last step
  local dir=$WORK/graph/$1.$2 graph=$2
  shift 2
  rm -rf "$dir" && mkdir -p "$dir"
  echo "=== train_gpt2cu.py $* --cuda-graph $graph"
  "$PY" "$ROOT/train_gpt2cu.py" -e gpt2_d12_bf16.bin -t 1024 -v 1000 -m 1 -s 0 -l 1e-3 -u 2 -o "$dir" "$@" \
    --cuda-graph "$graph" > "$dir.log" 2>&1
  local rc=$?
  grep -E '^(step|CUDA|\| CUDA graph|total average)' "$dir.log"
  [ $rc -eq 0 ] || { tail -n 20 "$dir.log"; return 1; }
}
steps_of() { grep '^step ' "$1" | sed -E 's/ \| [0-9.]+ ms \|.*//'; }  # the step lines without their timing
ms_of() {  # median ms/step over the steps after the first two (the eager warm-up and the capture)
  grep '^step ' "$1" | sed -E 's/.* \| ([0-9.]+) ms \|.*/\1/' | tail -n +3 | sort -n |
    awk '{v[NR] = $1} END {if (NR) printf "%.1f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
compare() {  # compare NAME MAXSTEP FLAGS...: eager and replayed runs of the same flags
  local name=$1 x=$2
  shift 2
  train "$name" 0 -x "$x" -n "$x" "$@" && train "$name" 1 -x "$x" -n "$x" "$@" || { results+=("$name: run failed"); return 1; }
  local eager=$WORK/graph/$name.0 graph=$WORK/graph/$name.1 model
  model=$(printf 'model_%08d.bin' "$x")
  local verdict="same losses and model"
  if ! diff <(steps_of "$eager.log") <(steps_of "$graph.log"); then verdict="LOSSES DIFFER"; status=1
  elif ! cmp "$eager/$model" "$graph/$model"; then verdict="MODEL FILES DIFFER"; status=1
  elif [ "$(steps_of "$graph.log" | wc -l)" -ne "$x" ]; then verdict="missing step lines"; status=1; fi
  results+=("$name: eager $(ms_of "$eager.log") ms, graph $(ms_of "$graph.log") ms, $verdict")
  rm -rf "$eager" "$graph"  # the optimizer state files are large
}
compare "B=4" 8 -b 4 || status=1
compare "B=2 accum 3 -r 2 -ge 2" 4 -b 2 -d 6144 -r 2 -ge 2 || status=1
figure "$(IFS=';'; echo "${results[*]}")"
exit $status
