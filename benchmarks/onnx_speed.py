"""ONNX Runtime beside torch on an exported student (export.py --onnx): users scored per second at batch 1 and
at batch 128 over the dataset's test histories, each beside its floor (the layers' matrix products for the
history tokens and the item scores, at the rate this CPU's fp32 products reach on those shapes, measured in
the same run).

    python export.py --run_dir out/main/student --output models/student --onnx
    python benchmarks/onnx_speed.py --model models/student --data data/ml-100k

Every path gets the same batches (histories grouped by length, each batch left-padded to its longest row,
as the Python path batches them); seen items are not masked (the graph's scores only). The best of `repeats`
passes over all test users.
"""

import numpy as np
import onnxruntime
import torch

from slmrec.batches import history_batches, trim_padding
from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.flags import parse_ints
from slmrec.inference import InferenceConfig
from slmrec.machine import can_compile
from slmrec.machine import hardware, peak_rss_mb
from slmrec.onnx_graph import ONNX
from slmrec.prepare import DEFAULT_DATA
from slmrec.recommender import Recommender
from slmrec.timing import linear_shapes, matmul_rate, seconds


def main(model: str, data: str = DEFAULT_DATA, batches="1,128", repeats: int = 3):
    dataset = PreparedData(data)
    histories = [dataset.history(u, "test") for u in range(dataset.num_users)]
    paths = {
        "torch, fp32": InferenceConfig(precision="fp32", compile=False),
        "torch, fp32, compiled": InferenceConfig(precision="fp32", compile=True) if can_compile("cpu") else None,
        "torch, bf16, compiled": InferenceConfig(precision="bf16", compile=True) if can_compile("cpu") else None,
    }
    session = onnxruntime.InferenceSession(f"{model}/{ONNX}")
    shipped = Recommender.from_pretrained(model, dataset, InferenceConfig(precision="fp32"))
    max_len = shipped.max_len
    shapes = linear_shapes(shipped.scorer.model)
    weights = sum(o * i for o, i in shapes)
    d, items = shipped.scorer.model.item_embedding.shape[1], dataset.num_items + 1
    print(
        f"{model}: {dataset.num_users} test users of {data}, {hardware()}, onnxruntime {onnxruntime.__version__}, "
        f"torch {torch.__version__}\n"
    )
    print("| path | batch | users/s | floor users/s (fp32) | of the floor |\n|---|---|---|---|---|")
    for b in parse_ints(batches):
        grouped = [trim_padding(p)[0] for _, p in history_batches(histories, max_len, b, True)]
        tokens = sum(int((p != 0).sum()) for p in grouped)
        flops = 2 * weights * tokens + 2 * d * items * len(histories)  # history tokens through the layers, scores
        rate = matmul_rate(shapes, min(b * max_len, 1024))
        floor = flops / rate
        rows = {}
        for name, cfg in paths.items():
            if cfg is None:
                continue
            scorer = Recommender.from_pretrained(model, dataset, cfg).scorer
            tensors = [torch.from_numpy(p) for p in grouped]
            rows[name] = seconds(lambda: [scorer(x) for x in tensors], repeats, 1, "min")
        arrays = [p.astype(np.int64) for p in grouped]
        rows["ONNX Runtime (fp32 graph)"] = seconds(
            lambda: [session.run(None, {"history": x}) for x in arrays], repeats, 1, "min"
        )
        for name, s in rows.items():
            print(f"| {name} | {b} | {len(histories) / s:,.0f} | {len(histories) / floor:,.0f} | {floor / s:.0%} |")
    print(f"\npeak RSS {peak_rss_mb():,.0f} MB")


if __name__ == "__main__":
    run(main)
