#!/usr/bin/env bash
# Train the teacher: bash run_finetune.sh <out_dir> [extra finetune.py flags]
# With no extra flags: ml-100k, its SASRec embeddings, smollm2-135m, M = 8 layers (preparing what is missing).
# DATA=... EMB=... choose another prepared dataset and embedding pickle; several GPUs run DDP.
set -euo pipefail
cd "$(dirname "$0")"
[ $# -ge 1 ] || { echo "usage: bash run_finetune.sh <out_dir> [finetune.py flags]" >&2; exit 2; }
OUT_DIR=$1; shift
source scripts/common.sh
ensure_embeddings
launch finetune.py --data "$DATA" --item_embedding "$EMB" --output_dir "$OUT_DIR" "$@"
