"""torch.compile on the fast scoring path: users/s over the test histories with and without it, the compile
time, and the largest score difference, as a table (one process, one after the other).

    python benchmarks/compile_speed.py --checkpoint out/main/student --data data/ml-100k

The LM of FastELLMRec (LoRA merged, frozen weights in the compute dtype) is compiled with dynamic shapes, so
batches of other lengths do not recompile; the rest of the scoring (embedding lookup, head) stays eager.
"""

import time

import torch

from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.inference import InferenceConfig, Recommender
from slmrec.metrics import evaluate
from slmrec.precision import resolve_precision
from slmrec.utils import hardware


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(checkpoint: str, data: str, mode: str = "default"):
    """mode: torch.compile's mode (default, reduce-overhead, max-autotune-no-cudagraphs)."""
    dataset = PreparedData(data)
    histories = [dataset.history(u, "test") for u in range(dataset.num_users)]
    cfg = InferenceConfig()
    rows = []
    scores = {}
    for compiled in (False, True):
        rec = Recommender.from_checkpoint(checkpoint, dataset, cfg)
        compile_s = 0.0
        if compiled:
            rec.scorer.lm = torch.compile(rec.scorer.lm, dynamic=True, mode=mode)
            # every length group's shape once: what a server pays at its start
            _, compile_s = timed(lambda: evaluate(rec.scorer, dataset, "test", rec.max_len, cfg.batch_size,
                                                  by_length=True))
        else:
            evaluate(rec.scorer, dataset, "test", rec.max_len, cfg.batch_size, by_length=True)  # warm-up
        _, seconds = timed(lambda: evaluate(rec.scorer, dataset, "test", rec.max_len, cfg.batch_size,
                                            by_length=True))
        with torch.inference_mode():
            batch = torch.zeros(64, rec.max_len, dtype=torch.long)
            for r, h in enumerate(histories[:64]):
                h = h[-rec.max_len:]
                batch[r, rec.max_len - len(h):] = torch.as_tensor(h)
            scores[compiled] = rec.scorer(batch).float()
        _, one_s = timed(lambda: [rec.scorer(batch[i:i + 1]) for i in range(32)])
        rows.append((compiled, compile_s, dataset.num_users / seconds, one_s / 32 * 1000))
    diff = (scores[True] - scores[False]).abs().max().item()
    print(f"{checkpoint}: all {dataset.num_users} test histories, batch {cfg.batch_size} by length, "
          f"{resolve_precision('auto')}, {hardware()}, torch {torch.__version__}, mode {mode}\n")
    print("| fast path | compile s (first pass) | users/s at batch 128 | ms per user at batch 1 |\n|---|---|---|---|")
    for compiled, compile_s, users, ms in rows:
        print(f"| {'torch.compile' if compiled else 'eager'} | {compile_s:.0f} | {users:.0f} | {ms:.1f} |")
    print(f"\nlargest score difference, compiled against eager, 64 histories: {diff:.2e}")


if __name__ == "__main__":
    run(main)
