#!/usr/bin/env bash
# The main job on the embedded defaults (ml-100k, SmolLM2-135M): prepare the data, train SASRec, export its
# item embeddings, train the 8-layer teacher, distill the 4-layer student, print one results table.
# Teacher and student train with every-position supervision until validation MRR stops improving (see README
# for the measured time). Outputs in out/main; a re-run skips finished stages and resumes an interrupted one
# from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
source scripts/common.sh
ensure_embeddings
[ -f out/main/teacher/test_metrics.json ] || bash run_finetune.sh out/main/teacher --resume
[ -f out/main/student/test_metrics.json ] || bash run_distill.sh out/main/teacher out/main/student --resume
"$PY" -m slmrec.report out/main
