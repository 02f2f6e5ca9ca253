#!/usr/bin/env bash
# Train the SLMRec student: bash run_distill.sh <teacher_ckpt> <out_dir> [extra distill.py flags]
# With no extra flags: N = 4 layers and the DistillConfig defaults (slmrec/distill.py: B = 4 blocks, the loss weights),
# offline KD, on the dataset the teacher was trained on (--data or DATA=... to name it). Several GPUs run DDP.
set -euo pipefail
cd "$(dirname "$0")"
[ $# -ge 2 ] || { echo "usage: bash run_distill.sh <teacher_ckpt> <out_dir> [distill.py flags]" >&2; exit 2; }
TEACHER=$1; OUT_DIR=$2; shift 2
REST=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA=$2; shift 2 ;;
    --data=*) DATA=${1#*=}; shift ;;
    *) REST+=("$1"); shift ;;
  esac
done
DATA_FLAG=()
[ -z "${DATA:-}" ] || DATA_FLAG=(--data "$DATA")  # else distill.py reads the teacher's from its run_config.json
source scripts/common.sh
launch distill.py --teacher "$TEACHER" "${DATA_FLAG[@]}" --output_dir "$OUT_DIR" "${REST[@]}"
