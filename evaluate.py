"""Score a trained teacher or student from its checkpoint alone (no teacher, no flags to repeat).

    python evaluate.py --checkpoint out/teacher --data data/ml-100k               # test metrics
    python evaluate.py --checkpoint out/teacher --data data/ml-100k --layers 1,2,4,8
        # direct inference from intermediate layers (paper Fig. 2): the state after layer l through the
        # final norm and the trained head, no retraining
"""

import json

import fire
import torch

from slmrec.data import PreparedData
from slmrec.metrics import evaluate
from slmrec.model import load_ellmrec
from slmrec.utils import save_json, setup_logging


def main(checkpoint: str, data: str, split: str = "test", layers=None, batch_size: int = 64, output: str = None):
    setup_logging()
    dataset = PreparedData(data)
    model = load_ellmrec(checkpoint, dataset)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    max_len = model.cfg.max_len
    if layers is None:
        results = evaluate(model.score, dataset, split, max_len, batch_size, device)
    else:
        layers = [layers] if isinstance(layers, int) else [int(x) for x in str(layers).strip("()[]").split(",")]
        results = {f"layer_{l}": evaluate(lambda h, l=l: model.score_from_layer(h, l), dataset, split, max_len,
                                          batch_size, device) for l in layers}
    if output:
        save_json(results, output)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    with torch.no_grad():
        fire.Fire(main)
