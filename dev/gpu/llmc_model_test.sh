#!/usr/bin/env bash
# llm.c's own model test (test_gpt2cu: bf16, cuDNN attention) on our d12 random-init fixture, the yardstick for
# test_gpt2cu.py's bf16 loss tolerance from random init. llm.c's test opens fixed file names, so a scratch folder
# links the fixture's files under them. Its expected losses are GPT-2 124M's, so its own verdicts do not apply
# here: its step losses are compared with the fixture's PyTorch reference losses (the debug state's header), as
# test_gpt2cu.py compares ours, and printed side by side with the largest difference.
#
#   bash dev/gpu/llmc_model_test.sh LLMC_DIR [FLAGS...]   # LLMC_DIR: test_gpt2cu built by build_llmc.sh; FLAGS
#                                                         # go to test_gpt2cu (-r 0, -ge 2, ...)
# Environment as dev/gpu/check.sh's (WORK holds the d12 fixture, written here when missing).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
llmc=${1:?usage: llmc_model_test.sh LLMC_DIR [FLAGS...]}
shift
[ -x "$llmc/test_gpt2cu" ] || { echo "error: $llmc/test_gpt2cu: not built (dev/gpu/build_llmc.sh DIR test_gpt2cu)" >&2; exit 1; }
llmc=$(cd "$llmc" && pwd)
d12=$(need_d12) || { echo "error: the d12 fixture was not written" >&2; exit 1; }
scratch=$WORK/llmc_model_test
rm -rf "$scratch" && mkdir -p "$scratch"
ln -s "$d12/gpt2_d12_bf16.bin" "$scratch/gpt2_124M_bf16.bin"
ln -s "$d12/gpt2_d12_debug_state.bin" "$scratch/gpt2_124M_debug_state.bin"
ln -s "$d12/gpt2_tokenizer.bin" "$scratch/gpt2_tokenizer.bin"
ln -s "$d12/dev" "$scratch/dev"  # its reload check reads dev/data/tinyshakespeare/tiny_shakespeare_val.bin
echo "=== $llmc/test_gpt2cu $* (in $scratch, on the d12 fixture)"
(cd "$scratch" && "$llmc/test_gpt2cu" "$@") > "$scratch/test.log" 2>&1
status=$?
cat "$scratch/test.log"
echo "=== test_gpt2cu exited $status; its step losses against the fixture's PyTorch reference:"
"$PY" - "$ROOT" "$d12/gpt2_d12.bin" "$d12/gpt2_d12_debug_state.bin" "$scratch/test.log" <<'PY'
import re
import sys

sys.path.insert(0, sys.argv.pop(1))
from llmc_py.checkpoint import read_debug_state, read_model_header  # noqa: E402

config, _ = read_model_header(sys.argv[1])
reference = read_debug_state(sys.argv[2], config).losses
got = [float(x) for x in re.findall(r"^step \d+: loss ([-\d.]+)", open(sys.argv[3]).read(), re.M)]
if not reference or len(got) != len(reference):
    sys.exit(f"error: expected {len(reference)} step losses from test_gpt2cu, found {len(got)}")
for step, (a, b) in enumerate(zip(got, reference), 1):
    print(f"step {step:2d}: llm.c {a:f} reference {b:f} diff {a - b:+f}")
worst = max(range(len(got)), key=lambda i: abs(got[i] - reference[i]))
print(f"largest difference: {abs(got[worst] - reference[worst]):f} at step {worst + 1}")
PY
