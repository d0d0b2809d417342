# dev/bench_peers.py at B=64, T=1024, 2 warm-up + 3 timed steps: ours, PyTorch compiled, llm.c when built in $WORK/llm.c (the full benchmark: dev/gpu/bench_peers.sh, its own call)
# timeout: 240
source dev/gpu/lib.sh
d12=$(need_d12) || { figure "d12 fixture not written"; exit 1; }
peers=ours,pytorch llmc=()
if [ -f "$WORK/llm.c/.built" ]; then peers=$peers,llmc; llmc=(--llmc "$WORK/llm.c"); fi
result=$WORK/logs/peers_check.json
cd "$d12"
"$PY" "$ROOT/dev/bench_peers.py" -b 64 --warmup 2 --steps 3 --peers "$peers" "${llmc[@]}" --timeout 180 \
  --json "$result" --logs "$WORK/logs/peers_check"
status=$?
"$PY" - "$result" > "$FIGURE" <<'PY'
import json
import sys

runs = json.load(open(sys.argv[1]))["runs"]
parts = []
for run in runs:
    if run["status"] != "ok":
        parts.append(f"{run['peer']} {run['status'].upper()}")
        continue
    part = f"{run['peer']} {run['median_ms']:.1f} ms"
    if run["peer"] == "ours":
        part += f" {run['tok_per_s'] / 1000:.0f}k tok/s" + (f" {100 * run['mfu']:.0f}% MFU" if run["mfu"] else "")
    elif run["vs_ours"]:
        part += f" ({run['vs_ours']['tok_per_s']:.2f}x ours' tok/s)"
    parts.append(part)
print("B=64: " + "; ".join(parts))
PY
exit $status
