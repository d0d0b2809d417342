#!/usr/bin/env bash
# The whole path from raw text to a trained, evaluated and exported model, on a CPU in a few minutes:
# tinyshakespeare tokens, a small GPT-2 trained from scratch with val loss, a HellaSwag-style evaluation on a
# small eval file this script writes, the loss plot and a Hugging Face export. Everything goes into $OUT.
#
#   bash scripts/run_cpu_tinyshakespeare.sh
#   OUT=my_run MODEL=gpt2_d12.bin STEPS=20 bash scripts/run_cpu_tinyshakespeare.sh
#
# Settings (environment): OUT (default log_cpu), MODEL (a descriptor or a model .bin, default d6), STEPS (default 40),
# VAL_EVERY (val loss and HellaSwag every this many steps, default 10), TS_INPUT (a local tinyshakespeare
# input.txt; without it the text is downloaded once into dev/data/tinyshakespeare/), PYTHON (default python).
# The trainer reads its eval file at dev/data/hellaswag/hellaswag_val.bin of its working folder, so it runs
# inside $OUT, where this script writes the small file; the real HellaSwag file of the repo is left alone.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
OUT=${OUT:-log_cpu}
MODEL=${MODEL:-d6}
STEPS=${STEPS:-40}
VAL_EVERY=${VAL_EVERY:-10}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -f "$MODEL" ]; then MODEL=$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL"); fi

echo "== 1. tinyshakespeare -> token shards in $OUT/data"
"$PYTHON" "$ROOT/dev/data/tinyshakespeare.py" ${TS_INPUT:+--input "$TS_INPUT"} --out-dir "$OUT/data"

echo "== 2. a small eval file in the HellaSwag format"
cat > "$OUT/eval_mini.jsonl" <<'JSONL'
{"ctx": "The king rose from his throne and", "endings": ["called for his guards to follow him.", "melted into a puddle of soup.", "began to sell umbrellas to fish.", "folded himself into a paper boat."], "label": 0}
{"ctx": "She lit the candle because the room", "endings": ["had been painted with loud music.", "was dark and cold after sunset.", "wanted to become a river.", "ate all the bread on the table."], "label": 1}
{"ctx": "O gentle sleep, why dost thou", "endings": ["charge my phone in the kitchen?", "bake the stones into a cake?", "fly from me when I need thee most?", "count the wheels upon the cart?"], "label": 2}
{"ctx": "The soldiers marched all night, and at dawn they", "endings": ["turned into a flock of teacups.", "argued with the color of the sky.", "swallowed the mountain whole.", "reached the walls of the city."], "label": 3}
{"ctx": "Good morrow, cousin! What news", "endings": ["do you bring from the court today?", "is the shape of a sleeping onion?", "sings the hammer to the nail?", "rides the spoon across the sea?"], "label": 0}
{"ctx": "He drew his sword and", "endings": ["planted it in a pot of flowers to grow.", "stood ready to defend his friend.", "asked it politely for the time.", "poured it into a cup of milk."], "label": 1}
{"ctx": "The ship was lost in the storm, and the sailors", "endings": ["wrote a letter to the moon's uncle.", "painted the waves a calmer green.", "prayed that the winds would spare them.", "sold the ocean to a merchant."], "label": 2}
{"ctx": "Farewell, my lord; I shall", "endings": ["become the weather by Tuesday.", "knit a castle out of thunder.", "teach the door to whistle.", "return before the month is out."], "label": 3}
JSONL
mkdir -p "$OUT/dev/data/hellaswag"
"$PYTHON" "$ROOT/dev/data/hellaswag.py" --input "$OUT/eval_mini.jsonl" --out-dir "$OUT/dev/data/hellaswag"

echo "== 3. train $MODEL for $STEPS steps, val loss and HellaSwag every $VAL_EVERY, a checkpoint at the end"
cd "$OUT"
# samples print as text when the GPT-2 tokenizer file is there (make train writes it), else as token ids
if [ -f "$ROOT/gpt2_tokenizer.bin" ]; then ln -sf "$ROOT/gpt2_tokenizer.bin" gpt2_tokenizer.bin; fi
"$PYTHON" "$ROOT/train_gpt2cu.py" --device cpu -e "$MODEL" \
    -i data/tiny_shakespeare_train.bin -j data/tiny_shakespeare_val.bin -o log \
    -b 4 -t 64 -x "$STEPS" -l 1e-3 -u 2 -v "$VAL_EVERY" -m 4 -h 1 -s "$STEPS" -g 32 -n "$STEPS"

echo "== 4. the loss and HellaSwag curves"
"$PYTHON" "$ROOT/dev/vislog.py" log/main.log -o vislog.png --size none

echo "== 5. Hugging Face export of the last checkpoint"
"$PYTHON" "$ROOT/dev/export_hf.py" -i "log/$(printf 'model_%08d.bin' "$STEPS")" -o hf

echo "done: $OUT/log/main.log, $OUT/vislog.png, $OUT/hf (transformers: GPT2LMHeadModel.from_pretrained(\"$OUT/hf\"))"
