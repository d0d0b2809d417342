#!/usr/bin/env bash
# llm.c's starter pack, as llm.c publishes it on Hugging Face: GPT-2 124M (fp32 and bf16), its debug state, the
# GPT-2 tokenizer, the tinyshakespeare token shards and the HellaSwag val file, put where the programs look.
#
#   bash dev/download_starter_pack.sh                              # every file, into the repository root
#   bash dev/download_starter_pack.sh -d DIR gpt2_tokenizer.bin    # some of them, into DIR
#   bash dev/download_starter_pack.sh --list                       # the files, where they go, their sizes
#
# A file goes into NAME.part and is renamed into place only once it checks out: its size against the size
# llm.c's formats fix (every file but the HellaSwag one) and against the size the Hub publishes, and its SHA-256
# against the Hub's (a Git LFS file's x-linked-size and x-linked-etag headers). So a run that stops halfway
# leaves no half file under a real name, the next run resumes the .part where it stopped, and files already in
# place are checked and kept. LLMC_STARTER_PACK_URL replaces the base URL (a mirror that serves the same paths).
set -uo pipefail

BASE_URL=${LLMC_STARTER_PACK_URL:-https://huggingface.co/datasets/karpathy/llmc-starter-pack/resolve/main/}
BASE_URL=${BASE_URL%/}/
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# name, folder under the destination, size in bytes fixed by llm.c's formats ("-": not fixed)
FILES=(
  "gpt2_124M.bin . 497904640"                              # 1024 + 4 * 124,475,904 parameters
  "gpt2_124M_bf16.bin . 248952832"                         # 1024 + 2 * 124,475,904
  "gpt2_124M_debug_state.bin . 549369860"                  # B=4, T=64: x, y, logits, loss, grads
  "gpt2_tokenizer.bin . 372108"                            # 50,257 length-prefixed token records
  "tiny_shakespeare_train.bin dev/data/tinyshakespeare 611544"  # 305,260 tokens
  "tiny_shakespeare_val.bin dev/data/tinyshakespeare 66560"     # 32,768 tokens
  "hellaswag_val.bin dev/data/hellaswag -"
)
# curl's exit codes for "no network": cannot resolve, cannot connect, timed out, TLS handshake, nothing received
OFFLINE_CODES=" 5 6 7 28 35 52 56 "

usage() {
  sed -n '2,7s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
  exit "${1:-0}"
}

dest=$ROOT list=0 names=()
while [ $# -gt 0 ]; do
  case $1 in
    -d) [ $# -ge 2 ] || { echo "error: -d: expected a folder after it" >&2; exit 1; }; dest=$2; shift 2 ;;
    --list) list=1; shift ;;
    -h|--help) usage ;;
    -*) echo "error: $1: unknown option" >&2; usage 1 >&2 ;;
    *) names+=("$1"); shift ;;
  esac
done

if [ $list -eq 1 ]; then
  for entry in "${FILES[@]}"; do
    read -r name folder size <<< "$entry"
    printf '%-27s %-26s %s\n' "$name" "$folder" "$size"
  done
  exit 0
fi

# the entries asked for, in the table's order
selected=()
for entry in "${FILES[@]}"; do
  if [ ${#names[@]} -eq 0 ] || printf '%s\n' "${names[@]}" | grep -qxF "${entry%% *}"; then selected+=("$entry"); fi
done
for want in "${names[@]}"; do
  printf '%s\n' "${selected[@]%% *}" | grep -qxF -- "$want" || {
    echo "error: $want: not a starter pack file (see --list)" >&2; exit 1; }
done

command -v curl > /dev/null || { echo "error: curl is needed to download the starter pack" >&2; exit 1; }
if command -v sha256sum > /dev/null; then
  sha256() { sha256sum "$1" | cut -d' ' -f1; }
else
  sha256() { shasum -a 256 "$1" | cut -d' ' -f1; }
fi
file_size() { wc -c < "$1" | tr -d ' '; }
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
host=${BASE_URL#*://}
host=${host%%/*}

# offline RC: the run cannot go on without the network; says so once and stops
offline() {
  echo "error: cannot reach $host ($(grep -m1 'curl:' "$errors" || echo "curl exit $1")): the starter pack needs" \
       "network access; files already in place stay, and a later run resumes partial downloads" >&2
  exit 1
}

# response_headers URL [-L]: the response headers (lower case) of a HEAD request, or curl's exit status
response_headers() {
  local headers rc
  headers=$(curl -sS -I --max-time 60 "$@" 2> "$errors")
  rc=$?
  [ $rc -eq 0 ] || return $rc
  printf '%s\n' "$headers" | tr -d '\r' | tr 'A-Z' 'a-z'
}

# published NAME: sets hub_size and hub_sha from the Hub's headers (empty when it publishes none). The Hub
# answers a Git LFS file with a redirect whose x-linked-* headers describe the file; a plain server (a mirror)
# answers with the file, whose content-length is its size.
published() {
  local url=$BASE_URL$1 headers status rc
  headers=$(response_headers "$url")
  rc=$?
  if [[ $OFFLINE_CODES == *" $rc "* ]]; then offline $rc; fi
  status=$(printf '%s\n' "$headers" | sed -n '1s/^http[^ ]* \([0-9]*\).*/\1/p')
  if [ $rc -ne 0 ] || [[ $status != [23]* ]]; then
    echo "error: $1: cannot look it up at $url ($(grep -m1 'curl:' "$errors" || echo "HTTP ${status:-error}"))" >&2
    return 1
  fi
  hub_sha=$(printf '%s\n' "$headers" | sed -n 's/^x-linked-etag: *"\{0,1\}\([0-9a-f]\{64\}\)"\{0,1\} *$/\1/p' | head -n 1)
  hub_size=$(printf '%s\n' "$headers" | sed -n 's/^x-linked-size: *\([0-9][0-9]*\) *$/\1/p' | head -n 1)
  if [ -z "$hub_size" ] && [[ $status == 3* ]]; then headers=$(response_headers "$url" -L) || headers=""; fi
  [ -n "$hub_size" ] || hub_size=$(printf '%s\n' "$headers" | sed -n 's/^content-length: *\([0-9][0-9]*\) *$/\1/p' | tail -n 1)
  return 0
}

# check FILE SIZE SHA: empty when FILE has SIZE bytes and (if SHA is known) that SHA-256, else what differs
check() {
  local got
  got=$(file_size "$1")
  if [ "$got" != "$2" ]; then echo "$got bytes, expected $2"; return; fi
  if [ -n "$3" ]; then
    got=$(sha256 "$1")
    [ "$got" = "$3" ] || echo "SHA-256 $got, published $3"
  fi
}

# fetch NAME FOLDER FIXED_SIZE: 0 when the file is in place and checked
fetch() {
  local name=$1 dir=$dest/$2 fixed=$3 path size part have rc why
  dir=${dir%/.}
  path=$dir/$name
  published "$name" || return 1
  if [ "$fixed" != - ] && [ -n "$hub_size" ] && [ "$hub_size" != "$fixed" ]; then
    echo "error: $name: the published file has $hub_size bytes, llm.c's format makes it $fixed; not downloaded" >&2
    return 1
  fi
  size=$fixed
  [ "$size" != - ] || size=$hub_size
  if [ -z "$size" ]; then
    echo "error: $name: $host publishes no size for it, so it cannot be checked; not downloaded" >&2
    return 1
  fi
  [ -n "$hub_sha" ] || echo "note: $name: $host publishes no SHA-256 for it; checking its size only"
  if [ -e "$path" ]; then
    why=$(check "$path" "$size" "$hub_sha")
    if [ -z "$why" ]; then echo "$name: already in place and checked: $path"; return 0; fi
    echo "error: $name: $path exists but is not the published file ($why); move it away to download it" >&2
    return 1
  fi
  mkdir -p "$dir" || return 1
  part=$path.part
  have=0
  [ -e "$part" ] && have=$(file_size "$part")
  if [ "$have" -gt "$size" ]; then rm -f "$part"; have=0; fi
  if [ "$have" -lt "$size" ]; then
    if [ "$have" -gt 0 ]; then echo "resuming $name at byte $have of $size"; fi
    curl -L --fail --progress-bar -C - -o "$part" "$BASE_URL$name"
    rc=$?
    if [ $rc -eq 33 ]; then  # the server cannot resume: start over
      rm -f "$part"
      curl -L --fail --progress-bar -o "$part" "$BASE_URL$name"
      rc=$?
    fi
    if [[ $OFFLINE_CODES == *" $rc "* ]]; then offline $rc; fi
    if [ $rc -ne 0 ]; then
      have=0
      [ -e "$part" ] && have=$(file_size "$part")
      echo "error: $name: the download stopped at byte $have of $size (curl exit $rc); run this again to resume" >&2
      return 1
    fi
  fi
  why=$(check "$part" "$size" "$hub_sha")
  if [ -n "$why" ]; then
    rm -f "$part"
    echo "error: $name: the download is not the published file ($why); removed it, run this again to download it anew" >&2
    return 1
  fi
  mv -f "$part" "$path" || return 1
  echo "$name: downloaded and checked: $path"
}

failed=0 i=0
for entry in "${selected[@]}"; do
  read -r name folder size <<< "$entry"
  i=$((i + 1))
  label=" ($size bytes)"
  [ "$size" != - ] || label=""
  where=$dest/$folder
  echo "[$i/${#selected[@]}] $name$label -> ${where%/.}"
  fetch "$name" "$folder" "$size" || failed=$((failed + 1))
done
if [ $failed -gt 0 ]; then
  echo "$failed of ${#selected[@]} files not in place (see the errors above)" >&2
  exit 1
fi
echo "all ${#selected[@]} files in place and checked"
