# Sourced by the run_*.sh scripts: the embedded defaults, and a launcher that uses every local GPU.
PY=$(bash scripts/python.sh)  # the project's Python (setup.sh)
EMB_GIVEN=${EMB:-}                               # an embedding pickle named by the caller: used as it is
DATA=${DATA:-data/ml-100k}                       # a prepared dataset
# The SASRec run whose embeddings the LLM models use: the main job's for ml-100k, one per dataset otherwise
# (finetune.py also refuses embeddings whose recorded dataset fingerprint is not DATA's).
if [ "$(basename "$DATA")" = ml-100k ]; then EMB_DIR=${EMB_DIR:-out/main/sasrec}; else EMB_DIR=${EMB_DIR:-out/$(basename "$DATA")/sasrec}; fi
EMB=${EMB:-$EMB_DIR/item_embedding.pkl}

# Prepare ml-100k, train SASRec and export its embeddings, unless they are there already.
ensure_embeddings() {
  if [ ! -f "$DATA/stats.json" ]; then
    [ "$(basename "$DATA")" = ml-100k ] || { echo "error: no prepared dataset at $DATA (run prepare_data.py)" >&2; exit 2; }
    "$PY" prepare_data.py --source ml-100k --output_dir "$DATA"
  fi
  if [ -f "$EMB_DIR/test_metrics.json" ]; then  # finished: flags given for it are said to be unused
    [ -z "${SASREC_FLAGS:-}" ] ||
      echo "note: $EMB_DIR finished already; SASREC_FLAGS not used (remove the folder to train it again with them)" >&2
  else
    [ -f "$EMB" ] && return  # embeddings named by the caller, without a SASRec run here
    # shellcheck disable=SC2086  # SASREC_FLAGS (run_main.sh): a word list
    "$PY" train_sr_trad.py --data "$DATA" --output_dir "$EMB_DIR" --resume ${SASREC_FLAGS:-}
  fi
  [ -f "$EMB" ] && return
  "$PY" extract_emb.py --checkpoint "$EMB_DIR" --output "$EMB"
}

# Run a training script on one process, or one process per GPU (DDP through the Trainer) when several.
launch() {
  local gpus
  gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  if [ "$gpus" -gt 1 ]; then
    "$PY" -m torch.distributed.run --nproc_per_node="$gpus" "$@"
  else
    "$PY" "$@"
  fi
}
