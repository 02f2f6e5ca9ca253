#!/usr/bin/env bash
# The main job: prepare a dataset, train SASRec, export its item embeddings, train the 8-layer teacher, distill
# the 4-layer student, print one results table, export the student (out/.../student-export).
#   bash run_main.sh                           # the embedded defaults: ml-100k and SmolLM2-135M, into out/main
#   bash run_main.sh --source ratings.csv      # your ratings file (any prepare_data.py format) -> data/<name>,
#                                              # out/<name>/{sasrec,teacher,student}; <name>: the file's, or --name
#   bash run_main.sh --source 5core/last_out_w_his --name beauty   # a folder: a published split used as given
#   bash run_main.sh --data data/mine          # a dataset prepared already -> out/<its folder's name>
# --root DIR puts data/ and out/ under DIR. Extra flags for one stage: SASREC_FLAGS, TEACHER_FLAGS, STUDENT_FLAGS
# (e.g. TEACHER_FLAGS="--base_model /models/llama-7b"). A re-run skips finished stages and resumes an
# interrupted one from its last checkpoint.
set -euo pipefail
fail() { echo "error: run_main.sh: $*" >&2; exit 2; }
here() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }  # paths as the caller typed them, from where they stand
SOURCE= GIVEN_DATA=${DATA:+$(here "$DATA")} NAME= ROOT=  # DATA=DIR in the environment is --data DIR
while [ $# -gt 0 ]; do
  case "$1" in
    --source|--data|--name|--root) [ $# -ge 2 ] && [ -n "$2" ] || fail "$1 needs a value" ;;
  esac
  case "$1" in
    --source) SOURCE=$(here "$2"); shift 2 ;;
    --data) GIVEN_DATA=$(here "$2"); shift 2 ;;
    --name) NAME=$2; shift 2 ;;
    --root) ROOT=$(here "${2%/}")/; shift 2 ;;
    *) fail "unknown argument $1 (it takes --source FILE, --data DIR, --name NAME, --root DIR)" ;;
  esac
done
cd "$(dirname "$0")"
[ -z "$SOURCE" ] || [ -z "$GIVEN_DATA" ] || fail "give --source or --data, not both"
[ -z "$ROOT" ] || [ ! -e "${ROOT%/}" ] || [ -d "${ROOT%/}" ] || fail "--root ${ROOT%/} is a file, not a folder"
if [ -n "$SOURCE" ]; then
  [ -f "$SOURCE" ] || [ -d "$SOURCE" ] || fail "--source $SOURCE: no such file or folder"
  NAME=${NAME:-$(basename "$SOURCE" | sed 's/\..*//')}
  [ -n "$NAME" ] || fail "no folder name can be made from $(basename "$SOURCE"); give --name NAME"
elif [ -n "$GIVEN_DATA" ]; then
  NAME=${NAME:-$(basename "$GIVEN_DATA")}
fi
# out/<name> and data/<name> must stay under the root: a plain folder name
[ -z "$NAME" ] || [[ "$NAME" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
  fail "'$NAME' is not a plain folder name (letters, digits, . _ -, not starting with a dot); give --name NAME"
[ "${SLMREC_SKIP_SETUP:-0}" = 1 ] || bash setup.sh  # the tests skip it: their Python is set up already
PY=$(bash scripts/python.sh)
if [ -n "$SOURCE" ]; then
  DATA=${ROOT}data/$NAME
  if [ -f "$DATA/prepare_config.json" ]; then  # prepared once; a folder prepared from another file is refused
    "$PY" -c 'import json, os, sys; p = os.path.realpath; sys.exit(p(json.load(open(sys.argv[1]))["source"]) != p(sys.argv[2]))' \
      "$DATA/prepare_config.json" "$SOURCE" || fail "$DATA was prepared from another file; name this one with --name"
  else
    SPLIT=leave-one-out; [ -d "$SOURCE" ] && SPLIT=given  # a folder holds a split's train/valid/test files
    "$PY" prepare_data.py --source "$SOURCE" --output_dir "$DATA" --split "$SPLIT"
  fi
elif [ -n "$GIVEN_DATA" ]; then
  DATA=$GIVEN_DATA
fi
if [ -n "$NAME" ]; then OUT=${ROOT}out/$NAME; else OUT=${ROOT}out/main DATA=${ROOT}data/ml-100k; fi
export DATA EMB_DIR=$OUT/sasrec
source scripts/common.sh
ensure_embeddings
finished() {  # a finished stage is not run again, and flags given for it are said to be unused
  [ -f "$1/test_metrics.json" ] || return 1
  [ -z "$2" ] || echo "note: $1 finished already; $3 not used (remove the folder to train it again with them)" >&2
}
# shellcheck disable=SC2086  # the *_FLAGS are word lists
finished "$OUT/teacher" "${TEACHER_FLAGS:-}" TEACHER_FLAGS || bash run_finetune.sh "$OUT/teacher" --resume ${TEACHER_FLAGS:-}
# shellcheck disable=SC2086
finished "$OUT/student" "${STUDENT_FLAGS:-}" STUDENT_FLAGS || bash run_distill.sh "$OUT/teacher" "$OUT/student" --resume ${STUDENT_FLAGS:-}
"$PY" -m slmrec.report "$OUT"
# The student as one self-contained folder (export.py): what to ship.
if [ -f "$OUT/student-export/config.json" ]; then
  echo "the student, exported: $OUT/student-export ($(du -sh "$OUT/student-export" | cut -f1))"
else
  "$PY" export.py --run_dir "$OUT/student" --output "$OUT/student-export"
fi
