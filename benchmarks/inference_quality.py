"""What each inference option does to a trained E-LLMRec model's test metrics, as a table: the plain path
in fp32 is the reference; every other row gives its metrics, the largest score difference from the reference
and the share of users whose rank of the held-out item changed.

    python benchmarks/inference_quality.py --checkpoint out/main/student --data data/ml-100k
"""

import time

import numpy as np
import torch

from slmrec.cli import run
from slmrec.data import PreparedData, left_pad
from slmrec.inference import InferenceConfig, load_scorer
from slmrec.metrics import evaluate
from slmrec.utils import hardware

VARIANTS = {
    "plain, fp32": dict(fast=False, precision="fp32"),
    "plain, bf16 autocast": dict(fast=False, precision="bf16"),
    "fast, fp32": dict(precision="fp32"),
    "fast, bf16 matmuls, fp32 residual": dict(precision="bf16", residual="fp32", attention="sdpa"),
    "fast, bf16, SDPA attention": dict(precision="bf16", attention="sdpa"),
    "fast, bf16 (recommend.py's default; eager attention on a CPU)": dict(precision="bf16"),
    "fast, int8 weights": dict(int8=True),
}


def main(checkpoint: str, data: str = "data/ml-100k", split: str = "test", batch_size: int = 128):
    dataset = PreparedData(data)
    print(f"{checkpoint} on {dataset.path} ({split}, {dataset.num_users} users), {hardware()}\n")
    print("| inference | HR@10 | NDCG@10 | MRR | max abs score diff | users whose rank changed | seconds |")
    print("|---|---|---|---|---|---|---|")
    ref_scores = ref_ranks = None
    for name, flags in VARIANTS.items():
        cfg = InferenceConfig(batch_size=batch_size, **flags)
        scorer, max_len = load_scorer(checkpoint, dataset, cfg, "cpu")
        t = time.perf_counter()
        metrics = evaluate(scorer, dataset, split, max_len, batch_size, by_length=True, per_user=True)
        seconds = time.perf_counter() - t
        # Scores of the first batch of users, to compare with the reference's directly.
        first = torch.from_numpy(left_pad([dataset.history(int(u), split) for u in range(min(batch_size, dataset.num_users))], max_len))
        scores = scorer(first).float()
        ranks = np.asarray(metrics["ranks"]["candidates"])
        if ref_scores is None:
            ref_scores, ref_ranks = scores, ranks
        diff = (scores - ref_scores)[:, 1:].abs().max().item()
        changed = float(np.mean(ranks != ref_ranks))
        print(f"| {name} | {metrics['HR@10']:.4f} | {metrics['NDCG@10']:.4f} | {metrics['MRR']:.4f} | {diff:.2e} | "
              f"{changed:.1%} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    run(main)
