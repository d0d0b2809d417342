# dev/bench.py in bf16 at T=1024 with B=4 and with the largest of 64, 32, 16 that fits: ms/step, tok/s, MFU, peak memory
# timeout: 180
source dev/gpu/lib.sh
d12=$(need_d12) || { figure "d12 fixture not written"; exit 1; }
results=() status=0
model=$d12/gpt2_d12_bf16.bin
line=$(bench_fit "$model" 10 "" 4) && results+=("$line") || { results+=("B=4: FAIL ${line:-no B ran}"); status=1; }
line=$(bench_fit "$model" 10 "" 64 32 16) && results+=("$line") || { results+=("B=16..64: FAIL ${line:-no B ran}"); status=1; }
figure "$(IFS=';'; echo "${results[*]}")"
exit $status
