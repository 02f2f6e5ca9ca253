"""Train a conventional sequential recommender (SASRec by default; GRU4Rec, BERT4Rec) on a prepared dataset;
keep the best checkpoint by validation MRR; write test metrics.

    python train_sr_trad.py --data data/ml-100k --output_dir out/sasrec
    python train_sr_trad.py --data data/ml-100k --output_dir out/gru4rec --model gru4rec --num_layers 1
"""

import json

import fire

from slmrec.data import PreparedData
from slmrec.examples import WindowDataset
from slmrec.seqrec import SeqRecConfig, build_seqrec
from slmrec.training import TrainConfig, fit_and_test
from slmrec.utils import is_main_process, seed_everything, setup_logging


def main(data: str, output_dir: str, model: str = "sasrec", max_len: int = 50, hidden_size: int = 64,
         num_layers: int = 2, num_heads: int = 2, dropout: float = 0.2, mask_prob: float = 0.2,
         resume: bool = False, **train):
    """Extra flags are TrainConfig fields (slmrec/training.py): --epochs, --batch_size, --learning_rate,
    --eval_steps (default 0: once per epoch), --patience, --seed, ..."""
    setup_logging()
    # fp32 unless asked: these models are small, bf16 would save little and change their numbers.
    train = {"epochs": 200, "patience": 20, "precision": "fp32", **train}
    dataset = PreparedData(data)
    windows = WindowDataset(dataset, max_len)
    cfg = TrainConfig(**train)
    seed_everything(cfg.seed)
    model_cfg = SeqRecConfig(dataset.num_items, model, max_len, hidden_size, num_layers, num_heads, dropout,
                             mask_prob, data_fingerprint=dataset.fingerprint)
    net = build_seqrec(model_cfg)
    run_config = {"script": "train_sr_trad.py", "data": data, "model": model_cfg, "train": cfg}
    metrics = fit_and_test(net, dataset, windows, cfg, output_dir, max_len, run_config, resume=resume)
    if is_main_process():
        print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    fire.Fire(main)
