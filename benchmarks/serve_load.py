"""Load test of serve.py on loopback: throughput and latency at a fixed number of concurrent clients, beside the
in-process Recommender's throughput on the same histories (the ceiling), as a table.

    python benchmarks/serve_load.py --checkpoint out/main/student --data data/ml-100k
    python benchmarks/serve_load.py --checkpoint out/main/student --data data/ml-100k --bad_share 0.1

The server runs as its own process (python serve.py) on a free port of 127.0.0.1; each client sends its share
of a bounded number of requests one after another (the test users' histories, k 10); everything stops by
itself. With --bad_share, that share of the requests names an unknown item: they must get a 400 and the good
ones must be answered as without them.
"""

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.inference import InferenceConfig, Recommender
from slmrec.precision import resolve_precision
from slmrec.utils import hardware, parse_ints

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url, bodies, clients, timeout_s):
    """Send bodies from `clients` concurrent clients; [(status, seconds)] in the order sent."""
    results = [None] * len(bodies)
    queue = list(enumerate(bodies))[::-1]
    deadline = time.monotonic() + timeout_s

    async def client(http):
        while queue and time.monotonic() < deadline:
            i, body = queue.pop()
            t = time.perf_counter()
            try:
                status = (await http.post(url, json=body)).status_code
            except httpx.HTTPError:
                status = 0
            results[i] = (status, time.perf_counter() - t)

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return results


def main(checkpoint: str, data: str, clients="1,8,64", requests: int = 512, bad_share: float = 0.0,
         max_batch: int = 64, max_wait_ms: float = 5.0, timeout_s: float = 300.0, threads: int = 0):
    """threads: the server's torch threads (serve.py --threads; 0: one per core)."""
    dataset = PreparedData(data)
    item_ids, _ = dataset.items()
    users = range(dataset.num_users)
    histories = [[int(x) for x in dataset.history(u, "test")] for u in users][:requests]
    while len(histories) < requests:
        histories += histories[:requests - len(histories)]
    rng = np.random.default_rng(0)
    bad = set(rng.choice(requests, int(bad_share * requests), replace=False).tolist()) if bad_share else set()
    bodies = [{"history": ["no-such-item"] if i in bad else [item_ids[x] for x in h], "k": 10}
              for i, h in enumerate(histories)]

    # The ceiling: the same histories scored in-process on the server's scoring path (compiled, as serve.py
    # does), in batches of max_batch; and in batches of 8, what 8 clients waiting on each other can fill.
    rec = Recommender.from_checkpoint(checkpoint, dataset, InferenceConfig(compile=True))
    rec.recommend(histories[:8])

    def in_process(batch):
        t = time.perf_counter()
        for lo in range(0, len(histories), batch):
            rec.recommend(histories[lo:lo + batch])
        return len(histories) / (time.perf_counter() - t)

    ceiling, ceiling8 = in_process(max_batch), in_process(8)
    del rec

    port = free_port()
    t = time.perf_counter()
    server = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--checkpoint", checkpoint, "--data", data,
                               "--port", str(port), "--max_batch", str(max_batch), "--max_wait_ms", str(max_wait_ms),
                               "--threads", str(threads)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.perf_counter() - t > 120:
                raise SystemExit("the server did not become ready")
            time.sleep(0.05)
        ready_s = time.perf_counter() - t
        print(f"{checkpoint}: {requests} requests (k 10, test histories{f', {bad_share:.0%} bad' if bad else ''}), "
              f"server batches of up to {max_batch} within {max_wait_ms} ms, {threads or 'default'} torch threads, "
              f"{resolve_precision('auto')}, "
              f"{hardware()}; server ready {ready_s:.1f} s after its start (compiled and warmed up); in-process "
              f"ceiling {ceiling:.0f} requests/s in batches of {max_batch}, {ceiling8:.0f} in batches of 8\n")
        print("| clients | requests/s | ceiling / served | p50 ms | p95 ms | p99 ms | good answered | bad refused (400) "
              "| failed |\n|---|---|---|---|---|---|---|---|---|")
        for c in parse_ints(clients):
            t = time.perf_counter()
            results = asyncio.run(load(f"http://127.0.0.1:{port}/recommend", bodies, c, timeout_s))
            seconds = time.perf_counter() - t
            done = [r for r in results if r is not None]
            good = [r for i, r in enumerate(results) if r and i not in bad]
            lat = np.array([s for _, s in good]) * 1000
            ok = sum(st == 200 for st, _ in good)
            refused = sum(1 for i, r in enumerate(results) if r and i in bad and r[0] == 400)
            failed = len(results) - ok - refused
            print(f"| {c} | {len(done) / seconds:.1f} | {ceiling / (len(done) / seconds):.2f}x | "
                  f"{np.percentile(lat, 50):.1f} | {np.percentile(lat, 95):.1f} | {np.percentile(lat, 99):.1f} | "
                  f"{ok}/{len(histories) - len(bad)} | {refused}/{len(bad)} | {failed} |", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    run(main)
