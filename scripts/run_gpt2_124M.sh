#!/usr/bin/env bash
# GPT-2 (124M) from scratch on 10B tokens of FineWeb, on one node of GPUs (llm.c's reproduction recipe):
# 18,865 steps of 524,288 tokens, then the loss and HellaSwag curves beside OpenAI's GPT-2 124M.
#
#   bash scripts/run_gpt2_124M.sh             # 8 GPUs
#   NGPU=4 bash scripts/run_gpt2_124M.sh      # fewer GPUs: gradient accumulation keeps the 524,288-token batch
#
# 1. the FineWeb shards (dev/data/fineweb.py, needs `pip install datasets`) and 2. the HellaSwag eval file, each
#    skipped when already there: prep writes its files all together or not at all, so a file there means a whole
#    prep. 3. Training with -y 1 in a loop: a run that stops early is started again and resumes from its newest
#    checkpoint (-n 5000), until the DONE marker of the last step exists; after $RETRIES runs in a row that end
#    without a new checkpoint the loop gives up. 4. dev/vislog.py draws $OUT/main.log to $OUT/curves.png.
# Settings (environment): NGPU (default 8), OUT (default log_gpt2_124M), RETRIES (default 3), PYTHON (default
# python), LAUNCH (the launcher before python, default "mpirun -np $NGPU"; LAUNCH= runs one process).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python}
NGPU=${NGPU:-8}
LAUNCH=${LAUNCH-mpirun -np $NGPU}
OUT=${OUT:-log_gpt2_124M}
RETRIES=${RETRIES:-3}
STEPS=18865
DONE_FILE=$OUT/$(printf 'DONE_%08d' "$STEPS")

[ -f dev/data/fineweb10B/fineweb_val_000000.bin ] || "$PYTHON" dev/data/fineweb.py -v 10B
[ -f dev/data/hellaswag/hellaswag_val.bin ] || "$PYTHON" dev/data/hellaswag.py

newest_checkpoint() { ls "$OUT"/DONE_* 2>/dev/null | tail -n 1 || true; }
runs_without_progress=0
while [ ! -f "$DONE_FILE" ]; do
  before=$(newest_checkpoint)
  # shellcheck disable=SC2086  # LAUNCH is a command line
  $LAUNCH "$PYTHON" train_gpt2cu.py \
      -i "dev/data/fineweb10B/fineweb_train_*.bin" -j "dev/data/fineweb10B/fineweb_val_*.bin" \
      -o "$OUT" -v 250 -s 20000 -g 144 -h 1 -b 64 -t 1024 -d 524288 -r 0 -z 1 \
      -c 0.1 -l 0.0006 -q 0.0 -u 700 -n 5000 -x "$STEPS" -y 1 -e d12 || echo "training stopped (exit $?)"
  if [ "$(newest_checkpoint)" = "$before" ]; then
    runs_without_progress=$((runs_without_progress + 1))
  else
    runs_without_progress=0
  fi
  if [ ! -f "$DONE_FILE" ] && [ "$runs_without_progress" -ge "$RETRIES" ]; then
    echo "giving up: $RETRIES runs in a row ended without a new checkpoint in $OUT" >&2
    exit 1
  fi
  [ -f "$DONE_FILE" ] || sleep 1
done

"$PYTHON" dev/vislog.py "$OUT/main.log" -o "$OUT/curves.png" --size 124M
