#!/usr/bin/env bash
# The prepared device check of issues 17 and 34, for the first minutes of a lent GPU: one
# command. Expected time on an H100: about 7 minutes, never more than BUDGET_S (default 470 s)
# plus the copy: every step has its own time limit, cut to what is left of the budget, and a
# step with under 30 s left is skipped (the log says which). It runs, with what `make setup`
# installed (--threads 4 for the host's share):
#   1. the CUDA unit tests and cone-beam CT, which runs on CUDA only (tests/test_ct_cone.py;
#      skipped on CPU-only machines and in CI);
#   2. one 256 x 256 slice of DDS at the default precision (speed.py --device cuda ->
#      speed_cuda.md), and the same slice in float32 and in bfloat16 (seconds, PSNR, peak GPU
#      memory: JSON lines in the log);
#   3. the demo on the GPU (napari-patchdiff demo --device cuda -> /tmp/demo_gpu);
#   4. the volume throughput table: 16 and 64 slices, float32 and precision auto (speed.py
#      --throughput -> speed_volume_cuda.md / .json; rows are written as they finish);
#   5. a 256^3 volume DDS, 50 evaluations, precision auto: 256 slices of 256 x 256, the lung2
#      test slices 50-60 mirrored back and forth (lung2 has 61 slices; speed.volume_slices), in
#      the default windows of slices; wall time, peak GPU memory and the network's achieved
#      FLOP/s against the GPU's peak in the precision it ran at, both measured in the same run
#      (8192 x 8192 matrix multiply) and NVIDIA's datasheet figure (-> speed_volume256_cuda.md);
#   6. if time is left: the 64-slice row again as one window with all patches of an evaluation
#      in one network call (--batch 64 --max-batch 0 -> speed_volume_batched_cuda.md), to set
#      beside the default windows' row of step 4;
# and copies the results and its log to $OUT when set (the device tool's output folder).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PY=${PY:-.venv/bin/python}
CLI=${CLI:-.venv/bin/napari-patchdiff}
BUDGET_S=${BUDGET_S:-470}
LOG=${LOG:-/tmp/gpu_check.log}
RESULTS=benchmarks/results
START=$SECONDS
STAMP=$(mktemp)  # results newer than this are this run's
exec > >(tee "$LOG") 2>&1

step() {  # step NAME LIMIT_S COMMAND...: COMMAND with a time limit inside the budget
    local name=$1 limit=$2 left rc=0 t0=$SECONDS
    shift 2
    left=$((BUDGET_S - (SECONDS - START)))
    if [ "$left" -lt 30 ]; then
        echo "== $name: skipped, ${left} s of the budget left"
        return 0
    fi
    if [ "$limit" -gt "$left" ]; then limit=$left; fi
    echo "== $name (at most ${limit} s)"
    timeout "$limit" "$@" || rc=$?
    echo "== $name: exit $rc$([ "$rc" = 124 ] && echo ' (time limit)'), $((SECONDS - t0)) s"
}

finish() {
    echo "== total $((SECONDS - START)) s"
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT/demo_gpu"
        find "$RESULTS" -maxdepth 1 -name 'speed*cuda.*' -newer "$STAMP" \
            -exec cp {} "$OUT"/ \;
        cp /tmp/demo_gpu/report.json /tmp/demo_gpu/figure.png "$OUT/demo_gpu/" 2>/dev/null
        cp "$LOG" "$OUT"/ 2>/dev/null
    fi
    return 0
}
trap finish EXIT

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
git log -1 --format='code: %h %s' 2>/dev/null | cut -c1-120 || true
step "CUDA tests" 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_operators.py -k "cuda or cone" \
    tests/test_ct_cone.py
step "slice, default precision" 60 "$PY" benchmarks/speed.py --device cuda --threads 4
for prec in float32 bfloat16; do
    step "slice $prec" 45 "$PY" benchmarks/speed.py --device cuda --method dds --volume 1 \
        --precision "$prec" --threads 4
done
step "demo" 90 "$CLI" demo --out /tmp/demo_gpu --overwrite --device cuda
step "throughput 16 64" 170 "$PY" benchmarks/speed.py --throughput 16 64 \
    --precision float32 auto --device cuda --threads 4
step "256^3 DDS" 260 "$PY" benchmarks/speed.py --throughput 256 --precision auto \
    --device cuda --threads 4 --output speed_volume256_cuda
step "64 slices, one window, one network call" 60 "$PY" benchmarks/speed.py --throughput 64 \
    --precision auto --batch 64 --max-batch 0 --device cuda --threads 4 \
    --output speed_volume_batched_cuda
