#!/usr/bin/env bash
# The main job: prepare a dataset, train SASRec, export its item embeddings, train the 8-layer teacher, distill
# the 4-layer student, print one results table, export the student (out/.../student-export).
#   bash run_main.sh                           # the embedded defaults: ml-100k and SmolLM2-135M, into out/main
#   bash run_main.sh --source ratings.csv      # your ratings file (any prepare_data.py format) -> data/<name>,
#                                              # out/<name>/{sasrec,teacher,student}; <name>: the file's, or --name
#   bash run_main.sh --data data/mine          # a dataset prepared already -> out/<its folder's name>
# --root DIR puts data/ and out/ under DIR. Extra flags for one stage: SASREC_FLAGS, TEACHER_FLAGS, STUDENT_FLAGS
# (e.g. TEACHER_FLAGS="--base_model /models/llama-7b"). A re-run skips finished stages and resumes an
# interrupted one from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")"
SOURCE= GIVEN_DATA=${DATA:-} NAME= ROOT=  # DATA=DIR in the environment is --data DIR
while [ $# -gt 0 ]; do
  case "$1" in
    --source) SOURCE=$2; shift 2 ;;
    --data) GIVEN_DATA=$2; shift 2 ;;
    --name) NAME=$2; shift 2 ;;
    --root) ROOT=${2%/}/; shift 2 ;;
    *) echo "error: run_main.sh: unknown argument $1 (it takes --source FILE, --data DIR, --name NAME, --root DIR)" >&2
       exit 2 ;;
  esac
done
[ -z "$SOURCE" ] || [ -z "$GIVEN_DATA" ] || { echo "error: run_main.sh: give --source or --data, not both" >&2; exit 2; }
[ "${SLMREC_SKIP_SETUP:-0}" = 1 ] || bash setup.sh  # the tests skip it: their Python is set up already
PY=$(bash scripts/python.sh)
if [ -n "$SOURCE" ]; then
  [ -f "$SOURCE" ] || { echo "error: run_main.sh: --source $SOURCE: no such file" >&2; exit 2; }
  NAME=${NAME:-$(basename "$SOURCE" | sed 's/\..*//')}
  DATA=${ROOT}data/$NAME
  if [ -f "$DATA/prepare_config.json" ]; then  # prepared once; a folder prepared from another file is refused
    "$PY" -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["source"] != sys.argv[2])' \
      "$DATA/prepare_config.json" "$SOURCE" ||
      { echo "error: run_main.sh: $DATA was prepared from another file; name this one with --name" >&2; exit 2; }
  else
    "$PY" prepare_data.py --source "$SOURCE" --output_dir "$DATA"
  fi
elif [ -n "$GIVEN_DATA" ]; then
  DATA=$GIVEN_DATA NAME=${NAME:-$(basename "$GIVEN_DATA")}
fi
if [ -n "$NAME" ]; then OUT=${ROOT}out/$NAME; else OUT=${ROOT}out/main DATA=${ROOT}data/ml-100k; fi
export DATA EMB_DIR=$OUT/sasrec
source scripts/common.sh
ensure_embeddings
# shellcheck disable=SC2086  # the *_FLAGS are word lists
[ -f "$OUT/teacher/test_metrics.json" ] || bash run_finetune.sh "$OUT/teacher" --resume ${TEACHER_FLAGS:-}
# shellcheck disable=SC2086
[ -f "$OUT/student/test_metrics.json" ] || bash run_distill.sh "$OUT/teacher" "$OUT/student" --resume ${STUDENT_FLAGS:-}
"$PY" -m slmrec.report "$OUT"
# The student as one self-contained folder (export.py): what to ship.
if [ -f "$OUT/student-export/config.json" ]; then
  echo "the student, exported: $OUT/student-export ($(du -sh "$OUT/student-export" | cut -f1))"
else
  "$PY" export.py --run_dir "$OUT/student" --output "$OUT/student-export"
fi
