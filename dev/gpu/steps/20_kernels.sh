# kernel and backend tests (a line per test) and NCCL at world size 1; failures rerun alone, kernel failures under compute-sanitizer memcheck
# timeout: 300
source dev/gpu/lib.sh
xml=$WORK/logs/kernels.xml
"$PY" -m pytest -v -p no:cacheprovider -rfEs --junitxml="$xml" tests/test_kernels_gpu.py tests/test_gpu_backend.py \
  tests/test_multiprocess.py::test_nccl_world_size_1_on_gpu
# counts and the failing node ids from the JUnit report
read -r passed failed skipped <<< "$("$PY" dev/gpu/junit.py counts "$xml")"
mapfile -t failures < <("$PY" dev/gpu/junit.py failed "$xml")
# a failure after a sticky CUDA error may be another test's fault: the first few rerun alone, each launch
# synchronous (CUDA_LAUNCH_BLOCKING=1), so an asynchronous error surfaces at the launch that caused it
RERUNS=6
alone_failed=()
for id in "${failures[@]:0:$RERUNS}"; do
  echo "=== rerun alone: $id"
  CUDA_LAUNCH_BLOCKING=1 timeout 120 "$PY" -m pytest -q -p no:cacheprovider "$id" || alone_failed+=("$id")
done
[ ${#failures[@]} -gt $RERUNS ] && echo "=== $((${#failures[@]} - RERUNS)) more failures not rerun alone"
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2> /dev/null | head -n 1)
checked=0
for id in "${alone_failed[@]}"; do
  [[ $id == tests/test_kernels_gpu.py* ]] || continue
  if [ -z "$sanitizer" ]; then echo "=== compute-sanitizer not found: no memcheck rerun"; break; fi
  [ $checked -lt 2 ] || break
  echo "=== compute-sanitizer memcheck: $id"
  timeout 150 "$sanitizer" --tool memcheck --print-limit 20 "$PY" -m pytest -q -p no:cacheprovider "$id"
  checked=$((checked + 1))
done
figure "$passed passed, $failed failed (${#alone_failed[@]} alone${alone_failed:+: ${alone_failed[*]##*::}}), $skipped skipped"
[ "$failed" -eq 0 ] && [ "$skipped" -eq 0 ] && [ "$passed" -gt 0 ]
