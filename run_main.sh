#!/usr/bin/env bash
# The main job on the embedded defaults: prepare ml-100k, train SASRec, export its item embeddings,
# print the test metrics. Outputs go to ${OUT:-out/main}; finished steps are skipped on a re-run.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
PY=${PYTHON:-python3}
OUT=${OUT:-out/main}
DATA=${DATA:-data/ml-100k}
[ -f "$DATA/stats.json" ] || "$PY" datasets/process.py --source ml-100k --output_dir "$DATA"
[ -f "$OUT/sasrec/test_metrics.json" ] || "$PY" train_sr_trad.py --data "$DATA" --output_dir "$OUT/sasrec"
[ -f "$OUT/item_embedding.pkl" ] || "$PY" extract_emb.py --checkpoint "$OUT/sasrec" --output "$OUT/item_embedding.pkl"
"$PY" -m slmrec.report "$OUT"
