"""Load test of serve.py on loopback: throughput and latency at a fixed number of concurrent clients, beside the
in-process Recommender's throughput on the same histories (the ceiling), as a table.

    python benchmarks/serve_load.py --checkpoint out/main/student --data data/ml-100k
    python benchmarks/serve_load.py --checkpoint out/main/student --data data/ml-100k --bad_share 0.1

The server runs as its own process (python serve.py) on a free port of 127.0.0.1; each client sends its share
of a bounded number of requests one after another on one kept-alive connection (the test users' histories,
k 10); everything stops by itself. The clients share the server's cores, so they are written to cost little:
HTTP/1.1 over asyncio's streams, the request bytes made before the clock starts (httpx cost 1.2-1.5 ms of CPU a
request here, a fifth of what the server spends on one). Each row alternates `rounds` times between the
in-process ceiling (the same histories in batches of what that many clients can fill) and the server, so a
ratio compares timings taken seconds apart, not a run apart; the medians are reported, with the CPU time the server
and the clients took per request. With --bad_share, that share of the requests names an unknown item: they
must get a 400 and the good ones must be answered as without them.
"""

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.inference import InferenceConfig
from slmrec.recommender import Recommender
from slmrec.precision import resolve_precision
from slmrec.flags import parse_ints
from slmrec.machine import hardware

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port, timeout_s=300):
    """(the process, seconds from its start until GET /ready answers 200) of `serve.py args --port port`."""
    t = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "serve.py"), *args, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return server, time.perf_counter() - t
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.perf_counter() - t > timeout_s:
            server.kill()
            raise SystemExit(f"serve.py {' '.join(args)} did not become ready")
        time.sleep(0.05)


def post(body) -> bytes:
    data = json.dumps(body).encode()
    return (
        b"POST /recommend HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(data)
    ) + data


async def load(port, requests, clients, timeout_s):
    """Send the prepared requests from `clients` concurrent connections; [(status, seconds)] in the order sent."""
    results = [None] * len(requests)
    queue = list(enumerate(requests))[::-1]
    deadline = time.monotonic() + timeout_s

    async def client():
        reader = writer = None
        try:
            while queue and time.monotonic() < deadline:
                i, request = queue.pop()
                t = time.perf_counter()
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next(
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                    await reader.readexactly(length)
                    results[i] = (int(head.split(b" ", 2)[1]), time.perf_counter() - t)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    # a dropped connection is a failed request (status 0, counted in "failed"); the next reconnects
                    results[i] = (0, time.perf_counter() - t)
                    if writer:
                        writer.close()
                    reader = writer = None
        finally:
            if writer:
                writer.close()

    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), timeout_s + 60)
    return results


def cpu_seconds(pid=None) -> float:
    """User + system CPU time of a process (this one when pid is None)."""
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(
    checkpoint: str,
    data: str,
    clients="1,8,64",
    requests: int = 512,
    rounds: int = 3,
    bad_share: float = 0.0,
    max_batch: int = 64,
    max_wait_ms: float = 5.0,
    timeout_s: float = 300.0,
    threads: int = 0,
):
    """threads: the server's torch threads (serve.py --threads; 0: one per core); rounds: times each row
    alternates between the in-process ceiling and the server (medians reported)."""
    dataset = PreparedData(data)
    item_ids, _ = dataset.items()
    users = range(dataset.num_users)
    histories = [[int(x) for x in dataset.history(u, "test")] for u in users][:requests]
    while len(histories) < requests:
        histories += histories[: requests - len(histories)]
    rng = np.random.default_rng(0)
    bad = set(rng.choice(requests, int(bad_share * requests), replace=False).tolist()) if bad_share else set()
    wire = [
        post({"history": ["no-such-item"] if i in bad else [item_ids[x] for x in h], "k": 10})
        for i, h in enumerate(histories)
    ]

    # The ceiling: the same histories scored in-process on the server's scoring path (compiled, as serve.py
    # does), in batches as large as the clients can fill (each client waits for its answer before the next).
    rec = Recommender.from_checkpoint(checkpoint, dataset, InferenceConfig(compile=True))
    rec.recommend(histories[:8])

    def in_process(batch):
        t = time.perf_counter()
        for lo in range(0, len(histories), batch):
            rec.recommend(histories[lo : lo + batch])
        return len(histories) / (time.perf_counter() - t)

    port = free_port()
    server, ready_s = start_server(
        [
            "--checkpoint",
            checkpoint,
            "--data",
            data,
            "--max_batch",
            str(max_batch),
            "--max_wait_ms",
            str(max_wait_ms),
            "--threads",
            str(threads),
        ],
        port,
    )
    try:
        print(
            f"{checkpoint}: {requests} requests (k 10, test histories{f', {bad_share:.0%} bad' if bad else ''}) a "
            f"round, {rounds} rounds a row, server batches of up to {max_batch} within {max_wait_ms} ms, "
            f"{threads or 'default'} torch threads, {resolve_precision('auto')}, {hardware()}; server ready "
            f"{ready_s:.1f} s after its start (compiled and warmed up)\n"
        )
        print(
            "| clients | in-process requests/s (batch) | served requests/s | ceiling / served | p50 ms | p95 ms "
            "| p99 ms | server CPU ms a request | clients' CPU ms a request | good answered | bad refused (400) "
            "| failed |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
        )
        for c in parse_ints(clients):
            batch = min(c, max_batch)
            ceilings, served, server_cpu, client_cpu, lat, answers = [], [], [], [], [], []
            for _ in range(rounds):
                ceilings.append(in_process(batch))
                s0, c0, t = cpu_seconds(server.pid), cpu_seconds(), time.perf_counter()
                results = asyncio.run(load(port, wire, c, timeout_s))
                seconds = time.perf_counter() - t
                done = [r for r in results if r is not None]
                served.append(len(done) / seconds)
                server_cpu.append((cpu_seconds(server.pid) - s0) / len(done) * 1000)
                client_cpu.append((cpu_seconds() - c0) / len(done) * 1000)
                lat += [r[1] * 1000 for i, r in enumerate(results) if r and i not in bad]
                answers.append(results)
            good = [r for results in answers for i, r in enumerate(results) if r and i not in bad]
            ok = sum(st == 200 for st, _ in good)
            refused = sum(1 for results in answers for i, r in enumerate(results) if r and i in bad and r[0] == 400)
            failed = rounds * len(histories) - ok - refused
            ceiling, rate = np.median(ceilings), np.median(served)
            print(
                f"| {c} | {ceiling:.0f} ({batch}) | {rate:.1f} | {ceiling / rate:.2f}x | "
                f"{np.percentile(lat, 50):.1f} | {np.percentile(lat, 95):.1f} | {np.percentile(lat, 99):.1f} | "
                f"{np.median(server_cpu):.2f} | {np.median(client_cpu):.2f} | "
                f"{ok}/{rounds * (len(histories) - len(bad))} | {refused}/{rounds * len(bad)} | {failed} |",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    run(main)
