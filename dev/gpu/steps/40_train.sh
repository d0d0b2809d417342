# train_gpt2cu.py -e gpt2_d12_bf16.bin -b 4 -t 1024 -x 20 on tinyshakespeare: falling loss, val loss, a decoded sample
# timeout: 150
source dev/gpu/lib.sh
d12=$(need_d12) || { figure "d12 fixture not written"; exit 1; }
cd "$d12"
"$PY" "$ROOT/train_gpt2cu.py" -e gpt2_d12_bf16.bin -b 4 -t 1024 -x 20 | tee "$WORK/train.log"
rc=${PIPESTATUS[0]}
"$PY" "$ROOT/dev/gpu/trainlog.py" "$WORK/train.log" --min-drop 3 > "$FIGURE"
ok=$?
[ "$rc" -eq 0 ] && [ "$ok" -eq 0 ]
