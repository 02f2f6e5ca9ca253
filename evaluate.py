"""Score a trained model from its run directory alone (no teacher, no flags to repeat): an E-LLMRec teacher or
student, or a SASRec/GRU4Rec/BERT4Rec.

    python evaluate.py --checkpoint out/main/student --data data/ml-100k           # test metrics
    python evaluate.py --checkpoint out/main/student --data data/ml-100k --int8    # int8 weights (CPU)
    python evaluate.py --checkpoint out/teacher --data data/ml-100k --layers 1,2,4,8
        # direct inference from intermediate layers (paper Fig. 2): the state after layer l through the
        # final norm and the trained head, no retraining; all layers from one forward pass

E-LLMRec models score through the fast path of recommend.py (slmrec/inference.py) unless --fast false; the
test metrics that training writes come from the plain path (benchmarks/README.md has the difference).
"""

import json
from pathlib import Path

import numpy as np
import torch

from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.inference import InferenceConfig, auto_compile, autocast, load_scorer
from slmrec.metrics import evaluate
from slmrec.model import load_ellmrec
from slmrec.precision import compute_dtype
from slmrec.files import check_writable, save_json, save_npz
from slmrec.flags import parse_ints, split_flags
from slmrec.runtime import setup_logging
from slmrec.machine import compute_device


def main(checkpoint: str, data: str, split: str = "test", layers=None, output: str = None, **flags):
    """Other flags are InferenceConfig's (slmrec/inference.py): --precision, --fast, --int8, --batch_size, ..."""
    setup_logging()
    cfg = InferenceConfig(**split_flags(flags, InferenceConfig)[0])
    if output:
        check_writable(output, "--output", reads=[checkpoint, data])
    dataset = PreparedData(data)
    device = compute_device()
    if layers is None:
        scorer, max_len = load_scorer(checkpoint, dataset, auto_compile(cfg, dataset.num_users, device), device)
        results = evaluate(scorer, dataset, split, max_len, cfg.batch_size, device, by_length=cfg.by_length)
    else:
        layers = parse_ints(layers)
        model = load_ellmrec(checkpoint, dataset).to(device)
        with torch.inference_mode(), autocast(device, compute_dtype(cfg.precision)):
            by_layer = evaluate(
                lambda h: model.score_layers(h, layers),
                dataset,
                split,
                model.cfg.max_len,
                cfg.batch_size,
                device,
                per_user=True,
            )
        ranks = {f"layer_{l}": np.asarray(by_layer[l].pop("ranks")["candidates"]) for l in layers}
        results = {f"layer_{l}": by_layer[l] for l in layers}
        if output:  # per-user ranks beside the metrics (<output stem>_ranks.npz), for paired comparisons
            save_npz(Path(output).with_name(Path(output).stem + "_ranks.npz"), **ranks)
    if output:
        save_json(results, output)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    run(main, configs=(InferenceConfig,))
