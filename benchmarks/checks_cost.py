"""What the checks of docs/checks.md cost on a large dataset: each timed with and without it, one run.

    python benchmarks/checks_cost.py --data /tmp/scale/prepared-1        # a dataset of Clothing's shape (scale.py)

Rows: opening the dataset (the counts of stats.json against the arrays), reading every test row's stored
candidates as evaluation does (the ids' range), and the teacher-state cache's CRC-32 of one step's rows (batch 16
of SmolLM2's 576-wide states at B = 4 aligned layers, ~50 supervised rows an example).
"""

import statistics
import time

import numpy as np

from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.machine import hardware
from slmrec.teacher_cache import example_checks


def median_seconds(fn, repeat=5):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def read_candidates(data, block=256):
    users = np.arange(data.num_rows("test"))
    for lo in range(0, len(users), block):
        data.candidate_rows("test", users[lo : lo + block])


def main(data: str, repeat: int = 5):
    print(f"{data}, {hardware()}, median of {repeat}\n")
    print("| what | with the check (s) | the check alone (s) | the check's share |\n|---|---|---|---|")
    rows = []
    original = PreparedData._check_counts
    with_open = median_seconds(lambda: PreparedData(data), repeat)
    PreparedData._check_counts = lambda self, items: None
    without_open = median_seconds(lambda: PreparedData(data), repeat)
    PreparedData._check_counts = original
    rows.append(("open (stats.json's counts against the arrays)", with_open, with_open - without_open))
    dataset = PreparedData(data)
    n = dataset.num_rows("test")
    with_read = median_seconds(lambda: read_candidates(dataset), max(1, repeat // 2))
    # the check is one maximum per block read, on the stored type: timed on 64 blocks in memory, scaled
    table = dataset.candidates["test"]
    blocks = [np.array(table[lo : lo + 256]) for lo in range(0, min(n, 256 * 64), 256)]
    alone = median_seconds(lambda: [b.max() for b in blocks], repeat) * -(-n // 256) / len(blocks)
    rows.append((f"every test row's candidates, 256 at a time ({n:,} rows; ids in range)", with_read, alone))
    rng = np.random.default_rng(0)
    states = rng.integers(-(2**15), 2**15, (16 * 50, 4, 576), dtype=np.int16)  # bf16 states as stored
    final = rng.integers(-(2**15), 2**15, (16 * 50, 576), dtype=np.int16)
    offsets = np.arange(0, 16 * 50 + 1, 50)
    crc = median_seconds(lambda: example_checks(states, final, offsets, 0, 16), repeat * 4)
    rows.append(("teacher-cache CRC-32 of one step's rows (batch 16, a step ~0.5 s)", crc, crc))
    for what, total, check in rows:
        print(f"| {what} | {total:.4f} | {check:.4f} | {check / total:.0%} |")


if __name__ == "__main__":
    run(main)
