#!/usr/bin/env bash
# One GPU session's work in one command: build, GPU tests, compute-sanitizer,
# benchmark with FLA side by side. Run from the repository root on a machine
# with an NVIDIA GPU. Steps: any of build test sanitize demo ours bench
# bench_forward bench_recurrent cp (default: build test sanitize demo bench
# bench_forward bench_recurrent; 'cp' (2+ GPUs) runs the context-parallel
# test and benchmark;
# 'ours' is the libgdn chunk_state benchmark alone, 'bench' adds FLA side by
# side; 'bench_recurrent' runs bench/bench_recurrent (the decode step) and
# then FLA's fused_recurrent_gated_delta_rule on the same rows).
# Env: OUT (logs go there, default ./gpu-out), WHEELS (folder of wheels for
# FLA, default .whl), GDN_FIXTURES (FLA fixtures, default ../shared/fixtures/fla
# or .fixtures).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
steps=${*:-build test sanitize demo bench bench_forward bench_recurrent}
BUILD=build-gpu
fail=0
has() { [[ " $steps " == *" $1 "* ]]; }
# FLA and its dependencies from the wheels folder, once
fla_ready=0
fla_setup() {
  [ $fla_ready -eq 1 ] && return
  WHEELS=${WHEELS:-.whl}
  if [ -d "$WHEELS" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site
  fi
  fla_ready=1
}
if [ -z "${GDN_FIXTURES:-}" ]; then
  for d in ../shared/fixtures/fla .fixtures; do [ -d "$d" ] && export GDN_FIXTURES=$PWD/$d && break; done
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
if has build; then
  cmake -S . -B $BUILD -DCMAKE_BUILD_TYPE=Release > "$OUT/build.log" 2>&1 &&
    cmake --build $BUILD -j"$(nproc)" >> "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  grep -E "warning|spill" "$OUT/build.log" | head -20
fi
if has test; then
  timeout 300 ctest --test-dir $BUILD --output-on-failure 2>&1 | tee "$OUT/ctest.log" | tail -40 || fail=1
  grep -q "tests failed" "$OUT/ctest.log" && fail=1
  # the state kernel's other row tiles (64 rows, 4 row groups; 128 rows,
  # 8 row groups, sm_90), which the plan picks only for large problems:
  # every CUDA case through them as well
  # and both load schemes of that kernel wherever the plan would pick the other;
  # other split counts than the plan's for the long few-head cases;
  # the forward's three kernels on every case (the plan takes the fused
  # path wherever it applies), and the fused path forced on every case it
  # applies to, with both of its block sizes, both product forms and with
  # prep's per-value-head form
  for v in "GDN_CUDA_ROWS_PER_BLOCK=64 test_chunk_state_cuda" "GDN_CUDA_ROWS_PER_BLOCK=64 test_chunk_forward_cuda" \
           "GDN_CUDA_PRODUCER=1 test_chunk_state_cuda" "GDN_CUDA_PRODUCER=0 test_chunk_state_cuda" \
           "GDN_CUDA_PRODUCER=1 test_chunk_forward_cuda" "GDN_CUDA_SEGMENTS=2 test_chunk_state_cuda" \
           "GDN_CUDA_SEGMENTS=64 test_chunk_state_cuda" "GDN_CUDA_TMA=0 test_chunk_state_cuda" \
           "GDN_CUDA_ROWS_PER_BLOCK=64 GDN_CUDA_TMA=1 test_chunk_state_cuda" "GDN_CUDA_PRODUCER=0 test_chunk_forward_cuda" \
           "GDN_CUDA_PREP_V_LATE=1 test_chunk_forward_cuda" "GDN_CUDA_OUTPUT_BV=64 test_chunk_forward_cuda" \
           "GDN_CUDA_ROWS_PER_BLOCK=128 test_chunk_state_cuda" "GDN_CUDA_ROWS_PER_BLOCK=128 test_chunk_forward_cuda" \
           "GDN_CUDA_FUSED=0 test_chunk_forward_cuda" \
           "GDN_CUDA_FUSED=1 test_chunk_forward_cuda" "GDN_CUDA_FUSED=1 GDN_CUDA_FUSED_WARPS=4 test_chunk_forward_cuda" \
           "GDN_CUDA_FUSED=1 GDN_CUDA_PREP_SHARE=0 test_chunk_forward_cuda" \
           "GDN_CUDA_FUSED=1 GDN_CUDA_FUSED_WGMMA=0 test_chunk_forward_cuda" \
           "GDN_CUDA_FUSED=1 GDN_CUDA_FUSED_WGMMA=1 test_chunk_forward_cuda" \
           "GDN_CUDA_FUSED=1 GDN_CUDA_FUSED_TMA_O=0 test_chunk_forward_cuda" \
           "GDN_CUDA_FUSED=1 GDN_CUDA_FUSED_PAIRS=0 test_chunk_forward_cuda" \
           "GDN_CUDA_FUSED=1 GDN_CUDA_FUSED_TMA_IN=0 test_chunk_forward_cuda"; do
    t=${v##* }; envs=${v% *}; log="$OUT/variant_${envs//[ =]/_}_$t.log"
    env $envs timeout 200 $BUILD/tests/$t > "$log" 2>&1
    rc=$?
    echo "$t with $envs: exit $rc; $(grep -E 'passed' "$log" | tail -1)"
    [ $rc -eq 0 ] || { fail=1; grep -E "FAIL" "$log" | head -10; }
  done
fi
if has sanitize; then
  # synccheck: named barriers (the fused pass's pairs meet at different
  # instructions, so they must not use the aligned bar.sync)
  for t in test_chunk_state_cuda test_chunk_forward_cuda; do
    for tool in memcheck racecheck synccheck; do
      GDN_TEST_QUICK=1 timeout 200 compute-sanitizer --tool $tool --error-exitcode 9 $BUILD/tests/$t \
        > "$OUT/sanitize_${tool}_$t.log" 2>&1
      rc=$?
      echo "compute-sanitizer $tool $t: exit $rc; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|passed' "$OUT/sanitize_${tool}_$t.log" | tr '\n' ' ')"
      [ $rc -eq 0 ] || { fail=1; tail -30 "$OUT/sanitize_${tool}_$t.log"; }
    done
  done
  # the 64- and 128-row tiles (chosen only for large or split K <= 128 problems), the
  # kernel without a producer warp (sm_80's choice for most shapes), and
  # the producer's cp.async and tensor-copy fills beside the plan's
  for v in "GDN_CUDA_ROWS_PER_BLOCK=64 memcheck" "GDN_CUDA_PRODUCER=0 memcheck" "GDN_CUDA_TMA=0 racecheck" \
           "GDN_CUDA_ROWS_PER_BLOCK=64 GDN_CUDA_TMA=1 racecheck" "GDN_CUDA_ROWS_PER_BLOCK=128 memcheck" \
           "GDN_CUDA_ROWS_PER_BLOCK=128 racecheck"; do
    tool=${v##* }; envs=${v% *}; log="$OUT/sanitize_${envs//[ =]/_}_$tool.log"
    env $envs GDN_TEST_QUICK=1 timeout 200 compute-sanitizer --tool $tool --error-exitcode 9 \
      $BUILD/tests/test_chunk_state_cuda > "$log" 2>&1
    rc=$?
    echo "compute-sanitizer $tool ($envs): exit $rc; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|passed' "$log" | tr '\n' ' ')"
    [ $rc -eq 0 ] || { fail=1; tail -20 "$log"; }
  done
  # the three-kernel forward (the plan keeps it only where the fused path
  # does not apply: K or V above 128 or not multiples of 8, unaligned)
  log="$OUT/sanitize_fused0_memcheck.log"
  GDN_CUDA_FUSED=0 GDN_TEST_QUICK=1 timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 \
    $BUILD/tests/test_chunk_forward_cuda > "$log" 2>&1
  rc=$?
  echo "compute-sanitizer memcheck (GDN_CUDA_FUSED=0): exit $rc; $(grep -E 'ERROR SUMMARY|passed' "$log" | tr '\n' ' ')"
  [ $rc -eq 0 ] || { fail=1; tail -20 "$log"; }
  # the fused forward (prep's T/P form and the fused pass), in both of the
  # fused pass's product forms (mma.sync; wgmma on sm_90)
  for wg in 0 1; do for tool in memcheck racecheck; do
    log="$OUT/sanitize_fused_wgmma${wg}_$tool.log"
    GDN_CUDA_FUSED=1 GDN_CUDA_FUSED_WGMMA=$wg GDN_TEST_QUICK=1 timeout 200 compute-sanitizer --tool $tool \
      --error-exitcode 9 $BUILD/tests/test_chunk_forward_cuda > "$log" 2>&1
    rc=$?
    echo "compute-sanitizer $tool (GDN_CUDA_FUSED=1 GDN_CUDA_FUSED_WGMMA=$wg): exit $rc; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|passed' "$log" | tr '\n' ' ')"
    [ $rc -eq 0 ] || { fail=1; tail -20 "$log"; }
  done; done
  # gdn_recurrent_forward: every kernel configuration, padding and indices
  # past the pool (no shared memory, so racecheck has nothing to check)
  GDN_TEST_QUICK=1 timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 \
    $BUILD/tests/test_recurrent_forward_cuda > "$OUT/sanitize_recurrent.log" 2>&1
  rc=$?
  echo "compute-sanitizer memcheck (recurrent): exit $rc; $(grep -E 'ERROR SUMMARY|passed' "$OUT/sanitize_recurrent.log" | tr '\n' ' ')"
  [ $rc -eq 0 ] || { fail=1; tail -30 "$OUT/sanitize_recurrent.log"; }
fi
if has demo; then
  timeout 120 $BUILD/gdn demo 2>&1 | tee "$OUT/demo.txt" | tail -12
fi
if has ours && ! has bench; then
  timeout 200 $BUILD/bench/bench_chunk_state --csv "$OUT/ours.csv" | tee "$OUT/bench_ours.txt"
fi
if has bench; then
  fla_setup
  timeout 200 $BUILD/bench/bench_chunk_state --csv "$OUT/ours.csv" | tee "$OUT/bench_ours.txt"
  PYTHONUNBUFFERED=1 timeout 300 python3 bench/fla_chunk_state.py "$OUT/ours.csv" --markdown "$OUT/bench.md" \
    2>&1 | tee "$OUT/bench_fla.txt" | tail -15
fi
if has bench_forward; then
  # the whole forward, then FLA's chunk_gated_delta_rule on the same rows
  fla_setup
  timeout 200 $BUILD/bench/bench_chunk_forward --csv "$OUT/ours_forward.csv" | tee "$OUT/bench_forward_ours.txt" || fail=1
  PYTHONUNBUFFERED=1 timeout 540 python3 bench/fla_chunk_forward.py "$OUT/ours_forward.csv" \
    --markdown "$OUT/bench_forward.md" 2>&1 | tee "$OUT/bench_forward_fla.txt" | tail -12
fi
if has cp; then
  # context parallelism: needs 2+ GPUs (a multi-GPU kind), NVLink multicast off
  export NCCL_NVLS_ENABLE=0
  timeout 300 $BUILD/tests/test_chunk_forward_cp 2>&1 | tee "$OUT/test_cp.log" | tail -12 || fail=1
  timeout 500 $BUILD/bench/bench_chunk_forward_cp 2>&1 | tee "$OUT/bench_cp.txt" | tail -12
fi
if has bench_recurrent; then
  # ours first, then FLA on the same rows (each row in its own process)
  timeout 240 $BUILD/bench/bench_recurrent --csv "$OUT/ours_recurrent.csv" | tee "$OUT/bench_recurrent_ours.txt" || fail=1
  fla_setup
  PYTHONUNBUFFERED=1 timeout 480 python3 bench/fla_recurrent.py "$OUT/ours_recurrent.csv" \
    --markdown "$OUT/bench_recurrent.md" 2>&1 | tee "$OUT/bench_recurrent_fla.txt" | tail -30
fi
exit $fail
