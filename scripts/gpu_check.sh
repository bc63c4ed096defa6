#!/usr/bin/env bash
# The prepared device check of issue 17, for the first minutes of a lent GPU (one command, about
# 6 minutes on an H100/H200). It runs, with what `make setup` installed:
#   1. the CUDA unit tests (skipped on CPU-only machines and in CI);
#   2. one 256 x 256 slice of DDS in float32 (speed.py --device cuda -> speed_cuda.md);
#   3. the same in bfloat16, and a 64-slice volume in float32 and bfloat16 (seconds, PSNR,
#      peak GPU memory), printed as JSON lines;
# and copies the results to $OUT when set (the device tool's output folder).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
$PY -m pytest -q tests/test_operators.py -k cuda 2>&1 | tail -3
$PY benchmarks/speed.py --device cuda --threads 4
for prec in float32 bfloat16; do
    $PY benchmarks/speed.py --device cuda --method dds --volume 1 --precision "$prec" \
        --threads 4 | sed "s/^/slice $prec: /"
    $PY benchmarks/speed.py --device cuda --method dds --volume 64 --precision "$prec" \
        --threads 4 | sed "s/^/volume 64 $prec: /"
done
if [ -n "${OUT:-}" ]; then cp benchmarks/results/speed_cuda.* "$OUT"/; fi
