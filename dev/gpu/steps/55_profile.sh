# profile_gpt2cu.py, bf16, d12, T=1024, B=4 and 64: the per-op table from CUDA events, all five groups, the ops within the step
# timeout: 120
source dev/gpu/lib.sh
d12=$(need_d12) || { figure "d12 fixture not written"; exit 1; }
status=0 results=()
for B in 4 64; do
  echo "=== python profile_gpt2cu.py -e gpt2_d12_bf16.bin -b $B -t 1024"
  "$PY" profile_gpt2cu.py -e "$d12/gpt2_d12_bf16.bin" -b "$B" -t 1024 | tee "$WORK/profile.log"
  rc=${PIPESTATUS[0]}
  # one line: step and op totals and the groups' ms; fails when a group is missing or the ops exceed the step
  if [ "$rc" -eq 0 ] && line=$("$PY" - "$WORK/profile.log" "$B" <<'PY'
import re
import sys

text = open(sys.argv[1]).read()
total = re.search(r"takes ([\d.]+) ms in its ops \(([\d.]+) ms for the whole step", text)
groups = dict(re.findall(r"^  (encoder|forward|classifier|backward|optimizer) +([\d.]+) ms", text, re.M))
if total is None or len(groups) != 5:
    sys.exit("profile: the totals or a group line is missing")
ops, step = float(total.group(1)), float(total.group(2))
if not 0 < ops <= step * 1.01:
    sys.exit(f"profile: ops {ops} ms against a step of {step} ms")
short = {"encoder": "enc", "forward": "fwd", "classifier": "cls", "backward": "bwd", "optimizer": "opt"}
print(f"B={sys.argv[2]}: step {step:.1f} ms, ops {ops:.1f} (" +
      ", ".join(f"{short[g]} {float(ms):.1f}" for g, ms in groups.items()) + ")")
PY
  ); then results+=("$line"); else results+=("B=$B: FAIL"); status=1; fi
done
figure "$(IFS=';'; echo "${results[*]}")"
exit $status
