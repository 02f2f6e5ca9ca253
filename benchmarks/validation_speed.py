"""How training ranks users for validation and test (slmrec/training.py:ranking), against the plain path it
replaced, on trained run directories: seconds for every user of each split and how many ranks differ.

    python benchmarks/validation_speed.py --runs out/repro/seed42/e4srec_8,out/repro/seed42/slmrec

plain: ELLMRec.score in user order, batches trimmed to their longest history (what validation used before).
training: FastELLMRec with LoRA unmerged, weights in their training dtype and the model's attention (the
instruction's keys and values computed once, batches of similar history length). Both at the training's
evaluation batch (64) and precision, one after the other in this process.
"""

import time

import numpy as np
import torch

from slmrec.prepare import DEFAULT_DATA
from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.metrics import rank_users
from slmrec.model import load_ellmrec
from slmrec.precision import resolve_precision
from slmrec.training import ranking
from slmrec.machine import hardware


def main(runs: str, data: str = DEFAULT_DATA, precision: str = "auto", batch_size: int = 64):
    dataset = PreparedData(data)
    precision = resolve_precision(precision)
    users = np.arange(dataset.num_users)
    print(f"{dataset.path}, {len(users)} users per split, precision {precision}, batch {batch_size}, {hardware()}\n")
    print("| run | split | plain s | training's path s | speed-up | ranks that differ (candidates, full) |")
    print("|---|---|---|---|---|---|")
    for path in runs.split(","):
        model = load_ellmrec(path, dataset, precision=precision).eval()
        for split in ("valid", "test"):
            t = time.perf_counter()
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                plain = rank_users(model.score, dataset, split, users, model.cfg.max_len, batch_size)[None]
            t_plain, t = time.perf_counter() - t, time.perf_counter()
            fast = ranking(model, precision, "cpu")
            ranks = rank_users(
                data=dataset, split=split, users=users, max_len=model.cfg.max_len, batch_size=batch_size, **fast
            )[None]
            t_fast = time.perf_counter() - t
            differ = ", ".join(str(int((p != q).sum())) for p, q in zip(plain, ranks))
            print(
                f"| {path} | {split} | {t_plain:.1f} | {t_fast:.1f} | {t_plain / t_fast:.2f}x | {differ} |", flush=True
            )


if __name__ == "__main__":
    run(main)
