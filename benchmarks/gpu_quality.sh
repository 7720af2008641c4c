#!/usr/bin/env bash
# The LLM-SRec rows of the quality benchmark on a GPU worker, continuing a workspace whose data
# and SASRec stages ran elsewhere (a CPU machine):
#
#   python -m benchmarks.quality --models popularity,sasrec $(cat ARGS) --workdir WS --out cpu.json   # CPU
#   bash benchmarks/gpu_quality.sh WS ARGS                                                            # GPU
#
# ARGS is a file holding the data and sasrec arguments of the first command; the same arguments
# make `--resume` keep those stages (their command and params are unchanged). It runs the full
# model in WS and the paper's ablation (no L_distill, no L_uniform) in a copy of it, each with a
# wall-clock budget of DISTILL_MINUTES (default 2), and writes $OUT/quality_llmsrec.json and
# $OUT/quality_llmsrec_ablation.json. What to carry for a bare GPU worker: see gpu_env.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
WS=${1:?usage: gpu_quality.sh WORKSPACE ARGS_FILE}
ARGS=$(cat "${2:?usage: gpu_quality.sh WORKSPACE ARGS_FILE}")
OUT=${OUT:-benchmarks/results}
source benchmarks/gpu_env.sh
# Epochs bounded by a wall-clock budget; validation every EVAL_EVERY of an epoch (the paper: 0.1) on
# a larger subset than the CPU default affords.
DISTILL="--set distill.max_steps=null --set distill.max_minutes=${DISTILL_MINUTES:-2}
  --set distill.eval_every=${EVAL_EVERY:-0.25} --set distill.valid_users=${VALID_USERS:-300} --set distill.patience=5 --set distill.eval_batch_size=64
  --set distill.item_batch_size=256 --set evaluate.batch_size=256 ${EXTRA:-}"
rm -rf "$WS-ablation" && cp -r "$WS" "$WS-ablation"  # before the full run adds its distill outputs
# shellcheck disable=SC2086  # ARGS and DISTILL are word lists on purpose
python -m benchmarks.quality --models popularity,sasrec,llmsrec $ARGS $DISTILL --workdir "$WS" --resume \
    --out "$OUT/quality_llmsrec.json"
cp "$WS/reports/distill_curve.png" "$OUT/distill_curve.png" 2>/dev/null || true
[ "${ABLATION:-1}" = 0 ] && exit 0  # ABLATION=0: the full model only
# shellcheck disable=SC2086
python -m benchmarks.quality --models popularity,sasrec,llmsrec $ARGS $DISTILL --workdir "$WS-ablation" --resume \
    --set distill.use_distill_loss=false --set distill.use_uniform_loss=false --out "$OUT/quality_llmsrec_ablation.json"
cp "$WS-ablation/reports/distill_curve.png" "$OUT/distill_curve_ablation.png" 2>/dev/null || true
