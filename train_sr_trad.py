"""Train a conventional sequential recommender (SASRec by default; GRU4Rec, BERT4Rec) on a prepared dataset;
keep the best checkpoint by validation MRR; write test metrics.

    python train_sr_trad.py --data data/ml-100k --output_dir out/sasrec
    python train_sr_trad.py --data data/ml-100k --output_dir out/gru4rec --model gru4rec --num_layers 1
"""

import json

from slmrec.cli import run
from slmrec.prepare import DEFAULT_DATA, default_prepared
from slmrec.embeddings import DEFAULT_SASREC
from slmrec.examples import WindowDataset
from slmrec.seqrec import SeqRecConfig, build_seqrec
from slmrec.checkpoints import open_run_dir
from slmrec.training import SEQREC_TRAIN, TrainConfig, fit_and_test
from slmrec.flags import split_flags
from slmrec.runtime import is_main_process, seed_everything, setup_logging


def main(data: str = DEFAULT_DATA, output_dir: str = DEFAULT_SASREC, resume: str = "false", **flags):
    """With no flags: SASRec on the embedded default (ml-100k, prepared first if missing) into out/main/sasrec, as
    the main job's first stage. Flags are the fields of SeqRecConfig (slmrec/seqrec.py: --model, --max_len,
    --hidden_size, --num_layers, --num_heads, --dropout, --mask_prob) and TrainConfig (slmrec/training.py: --epochs,
    --batch_size, --learning_rate, --eval_steps (default 0: once per epoch), --patience, --seed, ...)."""
    setup_logging()
    mflags, tflags = split_flags(flags, SeqRecConfig, TrainConfig, fixed=("num_items", "data_fingerprint"))
    cfg = TrainConfig(**{**SEQREC_TRAIN, **tflags})
    run_dir = open_run_dir(output_dir, resume, reads=[data])
    seed_everything(cfg.seed)
    dataset = default_prepared(data)
    model_cfg = SeqRecConfig(dataset.num_items, **mflags, data_fingerprint=dataset.fingerprint)
    net = build_seqrec(model_cfg)
    windows = WindowDataset(dataset, model_cfg.max_len)
    run_config = {"script": "train_sr_trad.py", "data": data, "model": model_cfg, "train": cfg}
    metrics = fit_and_test(net, dataset, windows, cfg, run_dir, model_cfg.max_len, run_config)
    if is_main_process():
        print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    run(main, configs=(SeqRecConfig, TrainConfig), defaults=SEQREC_TRAIN)
