#!/usr/bin/env bash
# Profile one chunk_state launch (ncu) and the kernel's SASS instruction mix.
# Usage (on the GPU machine, after a build in build-gpu): scripts/gpu_profile.sh [shape]
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"; B=build-gpu
shape=${1:-q35_t8k}
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
OBJ=$(command -v cuobjdump || ls /usr/local/cuda*/bin/cuobjdump 2>/dev/null | head -1)
for rows in ${ROWS:-32}; do
  GDN_CUDA_ROWS_PER_BLOCK=$rows timeout 240 "$NCU" -k regex:${KERNEL:-chunk_state_kernel} -s 3 -c 1 \
    --section SpeedOfLight --section WarpStateStats --section InstructionStats \
    --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy --section ComputeWorkloadAnalysis \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
    $B/bench/${BENCH:-bench_chunk_state} --shape "$shape" > "$OUT/ncu_$rows.txt" 2>&1
  echo "== rows $rows"; grep -E "Duration|Executed Ipc|Issue Slots|Warp Cycles Per Issued|Stall|No Eligible|Registers Per|Executed Instructions  |L1/TEX Hit|Mem Pipes|Memory Throughput|Block Size|Grid Size|Dynamic Shared" "$OUT/ncu_$rows.txt" | head -40
  # stall reasons, warps per issued instruction, largest first
  grep -E "issue_stalled" "$OUT/ncu_$rows.txt" | awk '{print $NF, $1}' | sort -rn | head -12
done
if [ -n "$OBJ" ] && [ -n "${SASS:-}" ]; then
  # SASS: a pattern in the kernel's mangled name (e.g. SmemILi128ELi2ELi2ELi3EEELb1ELi0E)
  "$OBJ" -sass $B/CMakeFiles/gdn_objects.dir/src/cuda/chunk_state.cu.o |
    awk -v pat="$SASS" '/arch = sm_/ { arch = $0 } /Function :/ { on = index($0, pat) > 0 && index(arch, "sm_90") > 0 } on' > "$OUT/k.sass" 2>&1
  grep -oE "^\s+/\*[0-9a-f]{4}\*/\s+[A-Z0-9_.]+" "$OUT/k.sass" | awk '{print $2}' | sed 's/\..*//' | sort | uniq -c | sort -rn | head -30
fi
