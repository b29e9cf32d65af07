#!/usr/bin/env bash
# One device call for branch wip/combine-smem (the split path's combine
# kernel with P_s staged in shared memory): build, every GPU test (the split
# path is covered by test_chunk_state_cuda's split_* cases and
# test_chunk_forward_cuda's check_split_path; results must be bitwise what
# main gives, the summation order is unchanged), compute-sanitizer, then
# the benchmarks to compare with main's session-4 numbers in
# bench/RESULTS.md (tp8_t64k: state 1.276 ms, forward 1.952 ms). Merge only
# if every step passes and tp8 is faster.
set -uo pipefail
t0=$(date +%s)
bash scripts/gpu_check.sh build test 2>&1 | grep -v "^ptxas" | tail -14
echo "after tests $(( $(date +%s) - t0 )) s"
timeout 100 build-gpu/bench/bench_chunk_state 2>&1 | tail -9
timeout 100 build-gpu/bench/bench_chunk_forward 2>&1 | tail -8
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] && timeout 120 "$NCU" -k regex:combine_kernel -c 1 --section SpeedOfLight \
  build-gpu/bench/bench_chunk_state --shape tp8_t64k 2>&1 | grep -E "Duration|Throughput" | head -4
timeout 300 bash scripts/gpu_check.sh sanitize 2>&1 | grep compute-sanitizer
echo "total $(( $(date +%s) - t0 )) s"
