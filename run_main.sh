#!/usr/bin/env bash
# The main job on the embedded defaults (ml-100k, SmolLM2-135M): prepare the data, train SASRec, export its
# item embeddings, train the 8-layer teacher, distill the 4-layer student, print one results table.
# About 16 minutes on a 2-core CPU with bf16 (see README for the measured time). Outputs in out/main; a re-run
# skips finished stages and resumes an interrupted one from its last checkpoint.
# STEPS sets the teacher's and student's training steps (default 600, batch 16; the teacher's default too).
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
source scripts/common.sh
STEPS=${STEPS:-600}
ensure_embeddings
[ -f out/main/teacher/test_metrics.json ] || \
  bash run_finetune.sh out/main/teacher --max_steps "$STEPS" --eval_steps 100 --resume
[ -f out/main/student/test_metrics.json ] || \
  bash run_distill.sh out/main/teacher out/main/student --max_steps "$STEPS" --eval_steps 100 --resume
"$PY" -m slmrec.report out/main
