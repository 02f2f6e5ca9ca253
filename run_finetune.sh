#!/usr/bin/env bash
# Train the teacher: bash run_finetune.sh <out_dir> [extra finetune.py flags]
# With no extra flags: ml-100k, its SASRec embeddings, smollm2-135m, M = 8 layers (preparing what is missing).
# --data and --item_embedding (or DATA=... EMB=...) choose another prepared dataset and embedding pickle: what
# they name is used as it is, and only what they leave unset is prepared. Several GPUs run DDP.
set -euo pipefail
cd "$(dirname "$0")"
[ $# -ge 1 ] || { echo "usage: bash run_finetune.sh <out_dir> [finetune.py flags]" >&2; exit 2; }
OUT_DIR=$1; shift
REST=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA=$2; shift 2 ;;
    --data=*) DATA=${1#*=}; shift ;;
    --item_embedding) EMB=$2; shift 2 ;;
    --item_embedding=*) EMB=${1#*=}; shift ;;
    *) REST+=("$1"); shift ;;
  esac
done
source scripts/common.sh
[ -n "${EMB_GIVEN:-}" ] || ensure_embeddings
launch finetune.py --data "$DATA" --item_embedding "$EMB" --output_dir "$OUT_DIR" "${REST[@]}"
