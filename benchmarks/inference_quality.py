"""What each inference option does to a trained E-LLMRec model's scores and test metrics, as a table. Each row
gives its metrics, its norm-wise relative score difference from the plain path of the same precision (plain
fp32 for the fp32 and int8 rows), the share of users whose held-out item moved in rank, and the users whose
top 10 of all items is not that path's top 10: in all, and those where the change is not a near-tie (an item
that entered or left whose reference score is further from the 10th best than twice this user's largest
score difference between the two paths).

    python benchmarks/inference_quality.py --checkpoint out/main/student --data data/ml-100k
"""

import time

import numpy as np
import torch

from slmrec.prepare import DEFAULT_DATA
from slmrec.cli import run
from slmrec.batches import left_pad
from slmrec.data import PreparedData
from slmrec.inference import InferenceConfig, load_scorer
from slmrec.metrics import evaluate
from slmrec.machine import hardware

# name: (InferenceConfig flags, the row it is compared with)
VARIANTS = {
    "plain, fp32": (dict(fast=False, precision="fp32"), None),
    "fast, fp32, transformers' forward": (dict(precision="fp32", decoder=False), "plain, fp32"),
    "fast, fp32, own forward": (dict(precision="fp32"), "plain, fp32"),
    "fast, fp32, own forward compiled": (dict(precision="fp32", compile=True), "plain, fp32"),
    "plain, bf16 autocast": (dict(fast=False, precision="bf16"), None),
    "fast, bf16 matmuls, fp32 residual": (
        dict(precision="bf16", residual="fp32", decoder=False),
        "plain, bf16 autocast",
    ),
    "fast, bf16, transformers' forward": (dict(precision="bf16", decoder=False), "plain, bf16 autocast"),
    "fast, bf16, own forward (recommend.py)": (dict(precision="bf16"), "plain, bf16 autocast"),
    "fast, bf16, own forward compiled (serve.py)": (dict(precision="bf16", compile=True), "plain, bf16 autocast"),
    "fast, int8 weights": (dict(int8=True), "plain, fp32"),
}


def all_scores(scorer, histories, max_len, batch_size):
    """[users, items + 1] scores in user order."""
    with torch.inference_mode():
        return torch.cat(
            [
                scorer(torch.from_numpy(left_pad(histories[i : i + batch_size], max_len))).float()
                for i in range(0, len(histories), batch_size)
            ]
        ).numpy()


def top10_changes(ref, other, k=10):
    """(users whose top k differs, those of them where it is not a near-tie: see the module docstring)."""
    ref, other = ref[:, 1:], other[:, 1:]  # column 0 is padding
    r, o = np.argsort(-ref, 1)[:, :k], np.argsort(-other, 1)[:, :k]
    kth = np.sort(ref, 1)[:, -k]
    tol = 2 * np.abs(other - ref).max(1)
    differ = real = 0
    for u in range(len(ref)):
        changed = np.setxor1d(r[u], o[u])
        if len(changed):
            differ += 1
            real += bool(np.any(np.abs(ref[u, changed] - kth[u]) > tol[u]))
    return differ, real


def main(checkpoint: str, data: str = DEFAULT_DATA, split: str = "test", batch_size: int = 128):
    dataset = PreparedData(data)
    histories = [dataset.history(u, split) for u in range(dataset.num_users)]
    print(f"{checkpoint} on {dataset.path} ({split}, {dataset.num_users} users), {hardware()}\n")
    print(
        "| inference | HR@10 | NDCG@10 | MRR | rel. score diff | users whose rank changed | top 10 differs "
        "| not a near-tie | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    done = {}
    for name, (flags, against) in VARIANTS.items():
        cfg = InferenceConfig(batch_size=batch_size, **flags)
        scorer, max_len = load_scorer(checkpoint, dataset, cfg, "cpu")
        t = time.perf_counter()
        metrics = evaluate(scorer, dataset, split, max_len, batch_size, by_length=True, per_user=True)
        seconds = time.perf_counter() - t
        scores, ranks = all_scores(scorer, histories, max_len, batch_size), np.asarray(metrics["ranks"]["candidates"])
        done[name] = scores, ranks
        if against is None:
            cells = "0 | 0.0% | 0 | 0"
        else:
            ref, ref_ranks = done[against]
            rel = np.linalg.norm(scores[:, 1:] - ref[:, 1:]) / np.linalg.norm(ref[:, 1:])
            differ, real = top10_changes(ref, scores)
            cells = f"{rel:.1e} | {np.mean(ranks != ref_ranks):.1%} | {differ} | {real}"
        print(
            f"| {name} | {metrics['HR@10']:.4f} | {metrics['NDCG@10']:.4f} | {metrics['MRR']:.4f} | {cells} | "
            f"{seconds:.1f} |",
            flush=True,
        )
    ref32, bf16 = done["plain, fp32"][0], done["plain, bf16 autocast"][0]
    rel = np.linalg.norm(bf16[:, 1:] - ref32[:, 1:]) / np.linalg.norm(ref32[:, 1:])
    print(
        f"\nplain bf16 against plain fp32: rel. score diff {rel:.1e}, top 10 differs / not a near-tie: "
        f"{'{} / {}'.format(*top10_changes(ref32, bf16))}"
    )


if __name__ == "__main__":
    run(main)
