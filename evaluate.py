"""Score a trained teacher or student from its checkpoint alone (no teacher, no flags to repeat).

    python evaluate.py --checkpoint out/teacher --data data/ml-100k               # test metrics
    python evaluate.py --checkpoint out/teacher --data data/ml-100k --layers 1,2,4,8
        # direct inference from intermediate layers (paper Fig. 2): the state after layer l through the
        # final norm and the trained head, no retraining; all layers from one forward pass
"""

import json

import fire
import torch

from slmrec.data import PreparedData
from slmrec.metrics import evaluate
from slmrec.model import load_ellmrec
from slmrec.training import resolve_precision
from slmrec.utils import parse_ints, save_json, setup_logging


def main(checkpoint: str, data: str, split: str = "test", layers=None, batch_size: int = 64, output: str = None,
         precision: str = "auto"):
    """precision: auto (bf16 where the hardware has it, as in training), fp32, bf16 or fp16."""
    setup_logging()
    dataset = PreparedData(data)
    model = load_ellmrec(checkpoint, dataset)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    max_len = model.cfg.max_len
    precision = resolve_precision(precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
        if layers is None:
            results = evaluate(model.score, dataset, split, max_len, batch_size, device)
        else:
            layers = parse_ints(layers)
            by_layer = evaluate(lambda h: model.score_layers(h, layers), dataset, split, max_len, batch_size, device)
            results = {f"layer_{l}": by_layer[l] for l in layers}
    if output:
        save_json(results, output)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    fire.Fire(main)
