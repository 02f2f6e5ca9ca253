"""Two trained runs compared user by user on the same test users: each run's NDCG@10 and the paired difference
with its standard error, so a change (a new training path, another precision) is judged against the noise.

    python benchmarks/paired.py out/main/teacher results/runs/seed42/e4srec_8 results/runs/seed43/e4srec_8

The first run is compared with each of the others, and the others with one another (their spread is the
seed-to-seed noise when they are seeds of one setting). Reads each run's test_ranks.npz (stored candidates).
"""

import itertools

import numpy as np

from slmrec.cli import run
from slmrec.errors import DataError
from slmrec.metrics import ndcg_per_user


def ndcg(run_dir):
    return ndcg_per_user(np.load(f"{run_dir}/test_ranks.npz")["candidates"], 10).numpy()


def main(*runs):
    if len(runs) < 2:
        raise DataError("give at least two run folders (each with a test_ranks.npz)")
    values = {r: ndcg(r) for r in runs}
    sizes = {len(v) for v in values.values()}
    if len(sizes) != 1:
        raise DataError(f"the runs ranked different numbers of test users ({sorted(sizes)}): not the same users")
    print("| run | NDCG@10 |\n|---|---|")
    for r, v in values.items():
        print(f"| {r} | {v.mean():.4f} |")
    print("\n| pair | mean difference | standard error |\n|---|---|---|")
    pairs = [(runs[0], r) for r in runs[1:]] + list(itertools.combinations(runs[1:], 2))
    for a, b in pairs:
        d = values[a] - values[b]
        print(f"| {a} − {b} | {d.mean():+.4f} | {d.std(ddof=1) / np.sqrt(len(d)):.4f} |")


if __name__ == "__main__":
    run(main)
