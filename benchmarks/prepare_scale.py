"""Preparation time and peak memory on a synthetic Amazon-style ratings CSV.

    python benchmarks/prepare_scale.py --rows 10_000_000

Users and items follow Zipf-like popularity (as in Amazon), ratings are 1-5, timestamps random.
The preparation runs in a fresh process so its peak RSS is its own.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from slmrec.cli import run


def generate(path, rows, seed=0, chunk=1_000_000):
    rng = np.random.default_rng(seed)
    users, items = max(rows // 8, 10), max(rows // 30, 10)
    with open(path, "w") as fh:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            u = (rng.pareto(1.2, n) * users / 20).astype(np.int64) % users
            i = (rng.pareto(1.0, n) * items / 50).astype(np.int64) % items
            r = rng.integers(1, 6, n)
            t = rng.integers(1_300_000_000, 1_540_000_000, n)
            fh.write("".join(f"B{a:09d},A{b:010d},{c}.0,{d}\n" for a, b, c, d in zip(i, u, r, t)))


def child(source, output_dir):
    from slmrec.data import PrepareConfig, prepare

    t = time.perf_counter()
    stats = prepare(PrepareConfig(source), output_dir)
    seconds = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "stats": stats}))


def main(rows: int = 10_000_000, workdir: str = None):
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        src = Path(tmp) / "ratings.csv"
        t = time.perf_counter()
        generate(src, rows)
        gen_s = time.perf_counter() - t
        out = subprocess.run([sys.executable, __file__, "child", str(src), str(Path(tmp) / "prepared")],
                             capture_output=True, text=True, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        size_mb = os.path.getsize(src) / 2**20
    s = res["stats"]
    print("| rows | file MB | generate s | prepare s | rows/s | peak RSS MB | users | items | interactions |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {rows:,} | {size_mb:.0f} | {gen_s:.1f} | {res['seconds']:.1f} | {rows / res['seconds']:,.0f} | "
          f"{res['peak_rss_mb']:,.0f} | {s['users']:,} | {s['items']:,} | {s['interactions']:,} |")
    print(f"(cores: {os.cpu_count()}, python {sys.version.split()[0]})")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3])
    else:
        run(main)
