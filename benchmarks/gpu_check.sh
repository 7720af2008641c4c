#!/usr/bin/env bash
# LLM-SRec on one GPU (H100/H200), no network, within 10 minutes. Writes $OUT/gpu_check.json.
# What to carry for a bare GPU worker: see benchmarks/gpu_env.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
source benchmarks/gpu_env.sh
timeout 540 python -m benchmarks.gpu_check --backbone "${BACKBONE:-smollm2-135m}" --device "${DEVICE:-cuda}" \
    --steps "${STEPS:-20}" --out "$OUT/gpu_check.json"
