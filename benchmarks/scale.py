"""The cost of every stage as the data grows towards the paper's largest dataset (Amazon-18 Clothing: 1,219,678
users, 376,858 items, 11.3 M interactions after the protocol), with the wall time and peak RSS of each.

    python benchmarks/scale.py --fractions 0.01,0.1          # 1% and 10% of Clothing
    python benchmarks/scale.py --fractions 1.0 --stages prepare,open
    python benchmarks/scale.py --fractions 5.0 --stages prepare,open --num_negatives 99   # 5x Clothing's lines

It writes an Amazon-shaped ratings file (item,user,rating,timestamp; users with at least 5 ratings above 3, ~9
on average; Zipf-like item popularity; 10% of ratings at 3 or below and 1% repeated pairs, as Amazon's), then
runs each stage in a fresh process, so its peak RSS is its own:

    prepare      prepare_data.py on the file
    open         PreparedData (what every script does first)
    sasrec_step  SASRec training steps at the default batch (128), forward and backward
    sasrec_valid a validation pass as training runs it (the stored candidates)
    sasrec_test  a test pass (the stored candidates and full ranking over all items), with the floors its full
                 ranking has on this machine (arithmetic and memory bandwidth)
    ellmrec_step an E-LLMRec (teacher) step on a random tiny LM, batch 16
    recommend    recommend.py --user for one user of the dataset (a SASRec checkpoint: random weights time the
                 same as trained ones), from the start of the command
    serve        serve.py's app: from its start to /ready (model loaded and warmed up), then one request

Peak RSS is each stage's own (VmHWM, machine.peak_rss_mb) and includes the Python interpreter and torch (~220 MB
before any data).
"""

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from slmrec.cli import run
from slmrec.machine import peak_rss_mb

CLOTHING = dict(users=1_219_678, items=376_858)
STAGES = ("prepare", "open", "sasrec_step", "sasrec_valid", "sasrec_test", "ellmrec_step", "recommend", "serve")
ROOT = Path(__file__).resolve().parents[1]


LAYOUTS = ("csv", "2023-jsonl")


def generate(path, fraction, seed=0, chunk_users=200_000, layout="csv"):
    """An Amazon-18-shaped ratings file at `fraction` of Clothing's users and items; returns its line count.
    layout "csv": Amazon 2018's ratings CSV (item,user,rating,seconds); "2023-jsonl": Amazon 2023's review JSON
    lines (every field of the release, short texts; 28-character user ids, times in milliseconds)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    users, items = int(CLOTHING["users"] * fraction), int(CLOTHING["items"] * fraction)
    # Zipf-like popularity over a random order of the items (a popular item is not item 0)
    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    cdf = np.cumsum(weights[rng.permutation(items)]) / weights.sum()
    lines = 0
    with open(path, "w") as fh:
        for lo in range(0, users, chunk_users):
            n = min(chunk_users, users - lo)
            counts = 5 + rng.geometric(1 / 5.25, n) - 1  # >= 5 positive ratings, mean ~9.25
            user = np.repeat(np.arange(lo, lo + n), counts)
            item = np.minimum(np.searchsorted(cdf, rng.random(len(user))), items - 1)
            rating = np.where(rng.random(len(user)) < 0.9, rng.integers(4, 6, len(user)), rng.integers(1, 4, len(user)))
            when = rng.integers(1_300_000_000, 1_540_000_000, len(user))
            dup = rng.random(len(user)) < 0.01  # the same pair again, later
            frame = pd.DataFrame(
                {
                    "item": np.concatenate([item, item[dup]]),
                    "user": np.concatenate([user, user[dup]]),
                    "rating": np.concatenate([rating, rating[dup]]).astype(float),
                    "time": np.concatenate([when, when[dup] + 1000]),
                }
            )
            frame["item"] = "B" + frame["item"].astype(str).str.zfill(9)
            frame["user"] = "A" + frame["user"].astype(str).str.zfill(12 if layout == "csv" else 27)
            frame = frame.sample(frac=1.0, random_state=int(rng.integers(1 << 31)))
            if layout == "csv":
                frame.to_csv(fh, header=False, index=False)
            else:
                ms = (frame["time"] * 1000 + rng.integers(0, 1000, len(frame))).astype(str)
                fh.write(
                    (
                        '{"rating": '
                        + frame["rating"].astype(str)
                        + ', "title": "Fits well", "text": "Bought it for my daughter.", "images": [], "asin": "'
                        + frame["item"]
                        + '", "parent_asin": "'
                        + frame["item"]
                        + '", "user_id": "'
                        + frame["user"]
                        + '", "timestamp": '
                        + ms
                        + ', "helpful_vote": 0, "verified_purchase": true}\n'
                    ).str.cat()
                )
            lines += len(frame)
    return lines


def time_steps(model, examples, batch_size, steps):
    """The median seconds of a training step (forward, backward, AdamW) over random batches, after one warm-up,
    and how many of the batch's positions carry a label."""
    import torch

    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
    times, real = [], []
    for _ in range(steps + 1):
        batch = [examples[int(i)] for i in torch.randint(len(examples), (batch_size,))]
        x = torch.stack([b["input_ids"] for b in batch])
        y = torch.stack([b["labels"] for b in batch])
        t = time.perf_counter()
        model(x, y)["loss"].backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
        real.append(int((y != 0).sum()))
    return {"seconds": float(np.median(times[1:])), "per": "step", "real_positions": float(np.mean(real))}


def time_serving(name, data, prepared):
    """recommend.py for one user, or the HTTP app's start to ready and one request, on a SASRec checkpoint
    saved beside the dataset (made once)."""
    sys.path.insert(0, str(ROOT))  # the top-level scripts
    import recommend
    from fastapi.testclient import TestClient

    from slmrec.checkpoints import save_model
    from slmrec.recommender import Recommender
    from slmrec.seqrec import SeqRecConfig, build_seqrec
    from slmrec.serving import ServeConfig, create_app

    checkpoint = prepared.with_name(prepared.name + "-sasrec")
    if not checkpoint.is_dir():
        save_model(build_seqrec(SeqRecConfig(data.num_items, data_fingerprint=data.fingerprint)), checkpoint)
    user = data.users()[0]
    t = time.perf_counter()
    if name == "recommend":
        recommend.main(str(checkpoint), str(prepared), user=user, k=10)
        return {"seconds": time.perf_counter() - t}
    with TestClient(create_app(Recommender.from_checkpoint(checkpoint, prepared), ServeConfig())) as client:
        ready = time.perf_counter() - t
        t = time.perf_counter()
        answer = client.post("/recommend", json={"user": user, "k": 10})
        assert answer.status_code == 200, answer.text
        return {"seconds": ready, "request_ms": (time.perf_counter() - t) * 1000}


def machine_rates():
    """(FLOP/s of a large fp32 matmul, bytes/s a 1 GiB copy moves, read plus write) on this machine: the floors
    of ranking among all items are its arithmetic (2 d |I| FLOPs per user) and its score matrix written and read
    once (8 |I| bytes per user). Measured in the parent process, so no stage's peak RSS includes them."""
    from slmrec.timing import matmul_rate

    flops = matmul_rate([(2048, 2048)], 2048)
    x = np.ones(2**28, np.float32)
    y = np.empty_like(x)
    np.copyto(y, x)
    t = time.perf_counter()
    np.copyto(y, x)
    return flops, 2 * x.nbytes / (time.perf_counter() - t)


def stage(name, source, prepared, num_negatives="999", steps=5):
    """One stage in this process: prints {"seconds", "peak_rss_mb", ...} as its last line."""
    import torch

    torch.manual_seed(0)
    out = {}
    if name == "prepare":
        from slmrec.prepare import PrepareConfig, prepare

        t = time.perf_counter()
        stats = prepare(PrepareConfig(source, num_negatives=int(num_negatives)), prepared)
        out = {
            "seconds": time.perf_counter() - t,
            **{k: stats[k] for k in ("users", "items", "interactions", "lines_read", "reader", "time_unit")},
        }
        out["dataset_mb"] = sum(f.stat().st_size for f in Path(prepared).iterdir()) / 2**20
    elif name == "open":
        from slmrec.data import PreparedData

        t = time.perf_counter()
        PreparedData(prepared)
        out = {"seconds": time.perf_counter() - t}
    else:
        from slmrec.data import PreparedData
        from slmrec.examples import ExampleConfig, training_examples
        from slmrec.metrics import evaluate
        from slmrec.model import ELLMRec, ELLMRecConfig
        from slmrec.seqrec import SeqRecConfig, build_seqrec

        data = PreparedData(prepared)
        examples = training_examples(data, 50, ExampleConfig()) if name.endswith("_step") else None
        if name == "sasrec_step":
            out = time_steps(build_seqrec(SeqRecConfig(data.num_items)), examples, 128, steps)
        elif name == "ellmrec_step":
            table = torch.randn(data.num_items + 1, 64)
            model = ELLMRec(ELLMRecConfig(base_model="random:tiny", num_layers=8, max_len=50), table)
            out = time_steps(model, examples, 16, steps)
        elif name in ("recommend", "serve"):
            out = time_serving(name, data, Path(prepared))
        else:
            from slmrec.training import ranking

            model = build_seqrec(SeqRecConfig(data.num_items)).eval()
            full = name == "sasrec_test"
            t = time.perf_counter()
            evaluate(
                data=data,
                split="test" if full else "valid",
                max_len=50,
                batch_size=256,
                full=full,
                progress=True,
                **ranking(model, "fp32", "cpu"),
            )
            seconds = time.perf_counter() - t
            out = {
                "seconds": seconds,
                "users_per_s": data.num_users / seconds,
                "us_per_user": seconds / data.num_users * 1e6,
            }
            if full:
                out.update(ranked_items=data.num_items, hidden=model.cfg.hidden_size)
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def main(
    fractions="0.01,0.1", stages=",".join(STAGES), workdir: str = None, num_negatives: int = 999, layout: str = "csv"
):
    """fractions: of Clothing's users and items; stages: a subset of STAGES; workdir: a folder that keeps the
    ratings files between runs (each prepared dataset is made afresh), else a temporary one; num_negatives: the
    stored candidates' negatives per user and split (fewer where 1,000 would not fit the disk: 43 GB at 5x
    Clothing's users); layout: the ratings file's, one of LAYOUTS (2023-jsonl: Amazon 2023's review file)."""
    from slmrec.machine import hardware

    wanted = list(stages) if isinstance(stages, (list, tuple)) else [s.strip() for s in stages.split(",") if s.strip()]
    bad = [s for s in wanted if s not in STAGES]
    if bad:
        raise SystemExit(f"unknown stage(s) {bad}; choose from {STAGES}")
    if layout not in LAYOUTS:
        raise SystemExit(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    fracs = [float(f) for f in (fractions if isinstance(fractions, (list, tuple)) else str(fractions).split(","))]
    rows = []
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="slmrec-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        for f in fracs:
            suffix = "csv" if layout == "csv" else "jsonl"
            src = root / f"ratings-{f:g}.{suffix}"
            prepared = root / (f"prepared-{f:g}" + ("" if layout == "csv" else "-2023"))
            if not src.is_file():
                t = time.perf_counter()
                lines = generate(src, f, layout=layout)
                print(
                    f"wrote {src} ({lines:,} lines, {src.stat().st_size / 2**20:,.0f} MB) in "
                    f"{time.perf_counter() - t:.0f}s",
                    file=sys.stderr,
                )
            if "prepare" in wanted:  # made afresh, with the checkpoint the serving stages save beside it
                shutil.rmtree(prepared, ignore_errors=True)
                shutil.rmtree(prepared.with_name(prepared.name + "-sasrec"), ignore_errors=True)
            for name in wanted:
                if name != "prepare" and not prepared.is_dir():
                    continue
                command = [sys.executable, __file__, "stage", name, str(src), str(prepared), str(num_negatives)]
                res = subprocess.run(command, capture_output=True, text=True)
                if res.returncode != 0:
                    rows.append((f, name, {"error": res.stderr.strip().splitlines()[-1][:120]}))
                else:
                    rows.append((f, name, json.loads(res.stdout.strip().splitlines()[-1])))
                print(f, name, rows[-1][2], file=sys.stderr)
    finally:
        if not workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(hardware())
    if any("ranked_items" in r for _, _, r in rows):
        flops, bandwidth = machine_rates()
        print(f"fp32 matmul {flops / 1e12:.3f} TFLOP/s, copy {bandwidth / 1e9:.0f} GB/s (read plus write)")
        for _, _, r in rows:
            if "ranked_items" in r:
                d, items = r.pop("hidden"), r.pop("ranked_items")
                r.update(
                    floor_us_arithmetic=2 * d * items / flops * 1e6, floor_us_bandwidth=8 * items / bandwidth * 1e6
                )
    print("| fraction | stage | seconds | peak RSS MB | notes |")
    print("|---|---|---|---|---|")
    for f, name, r in rows:
        notes = ", ".join(
            f"{k} {v:,.0f}"
            if isinstance(v, (int, float)) and abs(v) >= 100
            else f"{k} {v:.3g}"
            if isinstance(v, float)
            else f"{k} {v}"
            for k, v in r.items()
            if k not in ("seconds", "peak_rss_mb") and v is not None
        )
        sec = f"{r['seconds']:.3f}" if "seconds" in r else "-"
        rss = f"{r['peak_rss_mb']:,.0f}" if "peak_rss_mb" in r else "-"
        print(f"| {f:g} | {name} | {sec} | {rss} | {notes} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "stage":
        stage(*sys.argv[2:6])
    else:
        run(main)
