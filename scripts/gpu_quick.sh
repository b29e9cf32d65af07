#!/usr/bin/env bash
# ad-hoc GPU run: build, named tests, optional sanitizer, forward bench (ours)
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"; B=build-gpu
export GDN_FIXTURES=$PWD/.fixtures
nvidia-smi --query-gpu=name --format=csv,noheader
t0=$(date +%s)
cmake -S . -B $B -DCMAKE_BUILD_TYPE=Release > "$OUT/build.log" 2>&1 && cmake --build $B -j16 >> "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
grep -i "nccl" "$OUT/build.log" | head -3
echo "build $(( $(date +%s) - t0 )) s"
for t in ${TESTS:-}; do
  timeout ${TT:-240} $B/tests/$t > "$OUT/$t.log" 2>&1; echo "$t: exit $?"; grep -E "FAIL|fail|error" "$OUT/$t.log" | head -${NF:-15}; tail -${NT:-3} "$OUT/$t.log"
done
for t in ${SAN:-}; do
  for tool in memcheck racecheck; do
    GDN_TEST_QUICK=1 timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/$t > "$OUT/san_${tool}_$t.log" 2>&1
    echo "sanitize $tool $t: exit $? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/san_${tool}_$t.log" | tr '\n' ' ')"
  done
done
if [ -n "${BENCH:-}" ]; then timeout 300 $B/bench/$BENCH ${BARGS:-} | tee "$OUT/$BENCH.txt"; fi
echo "total $(( $(date +%s) - t0 )) s"
