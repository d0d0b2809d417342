# kernel and backend tests (a line per test) and NCCL at world size 1; failures rerun alone, kernel failures under compute-sanitizer memcheck
# timeout: 300
source dev/gpu/lib.sh
xml=$WORK/logs/kernels.xml
"$PY" -m pytest -v -p no:cacheprovider -rfEs --junitxml="$xml" tests/test_kernels_gpu.py tests/test_gpu_backend.py \
  tests/test_multiprocess.py::test_nccl_world_size_1_on_gpu
# counts and the failing node ids from the JUnit report
read -r passed failed skipped <<< "$("$PY" dev/gpu/junit.py counts "$xml")"
mapfile -t failures < <("$PY" dev/gpu/junit.py failed "$xml")
alone_failed=()
for id in "${failures[@]}"; do  # a failure after a sticky CUDA error may be another test's fault: rerun alone
  echo "=== rerun alone: $id"
  timeout 120 "$PY" -m pytest -q -p no:cacheprovider "$id" || alone_failed+=("$id")
done
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
checked=0
for id in "${alone_failed[@]}"; do
  [[ $id == tests/test_kernels_gpu.py* ]] || continue
  [ -n "$sanitizer" ] && [ $checked -lt 2 ] || break
  echo "=== compute-sanitizer memcheck: $id"
  timeout 150 "$sanitizer" --tool memcheck --print-limit 20 "$PY" -m pytest -q -p no:cacheprovider "$id"
  checked=$((checked + 1))
done
figure "$passed passed, $failed failed (${#alone_failed[@]} alone${alone_failed:+: ${alone_failed[*]##*::}}), $skipped skipped"
[ "$failed" -eq 0 ] && [ "$skipped" -eq 0 ] && [ "$passed" -gt 0 ]
