"""What runtime.keep_freed_memory (glibc's malloc keeping what a step frees, set by fit_and_test) saves a
training step: the teacher's step on today's path (train_speed.py's `now`) in child processes that alternate
glibc's default settings and keep_freed_memory, round after round, so a drift in this machine's speed falls on
both arms alike. Per arm: the median step over all rounds, the page faults a step (getrusage's minor faults),
peak RSS; and the median over rounds of each round's default / kept ratio.

    python benchmarks/allocator.py --data data/ml-100k
"""

import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from train_speed import configure, epoch_order
from slmrec.backbone import load_backbone
from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.efficiency import autocast_for, collate, train_step
from slmrec.examples import ExampleConfig, training_examples
from slmrec.machine import hardware, peak_rss_mb
from slmrec.model import ELLMRec, ELLMRecConfig
from slmrec.precision import resolve_precision
from slmrec.runtime import keep_freed_memory


def child(data, precision, steps, kept, seed=0):
    """One arm: time `steps` teacher steps after two untimed ones; print a JSON line."""
    applied = keep_freed_memory() if kept else False
    dataset = PreparedData(data)
    examples = training_examples(dataset, 50, ExampleConfig())
    table = torch.randn(dataset.num_items + 1, 64, generator=torch.Generator().manual_seed(0))
    resolve_precision(precision)
    cfg = ELLMRecConfig(base_model="smollm2-135m", num_layers=8)
    model = ELLMRec(cfg, table, backbone=load_backbone("smollm2-135m", 8), precision=precision)
    configure(model, "now", precision)
    epoch = epoch_order(examples.lengths(), 16, True, seed)
    drawn = np.random.default_rng(seed).choice(len(epoch), steps + 2, replace=False)
    step = train_step(
        model, [collate([examples[int(i)] for i in epoch[j]]) for j in drawn], autocast_for(precision, "cpu")
    )
    step(), step()
    faults, times = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    print(json.dumps({"kept": applied, "times": times, "faults": faults, "rss": peak_rss_mb()}))


def main(data="data/ml-100k", precision: str = "bf16", rounds: int = 4, steps: int = 8, arm: str = None):
    """rounds: pairs of child processes (the order within a pair alternates); steps: timed steps per child;
    arm: default|kept, run as a child."""
    if arm is not None:
        return child(data, precision, steps, arm == "kept")
    arms = {"default": [], "kept": []}
    for r in range(rounds):
        for name in ("default", "kept") if r % 2 == 0 else ("kept", "default"):
            cmd = [sys.executable, __file__, "--data", data, "--precision", precision, "--steps", str(steps)]
            out = subprocess.run(cmd + ["--arm", name], check=True, capture_output=True, text=True).stdout
            arms[name].append(json.loads(out.strip().splitlines()[-1]))
    if not all(r["kept"] for r in arms["kept"]):
        raise SystemExit("keep_freed_memory did not apply here (glibc only): nothing to compare")
    print(
        f"the teacher's step (8 layers, batch 16, the defaults' path), {data}, {precision}, {rounds} rounds of "
        f"{steps} steps an arm, {hardware()}\n"
    )
    print("| glibc malloc | median step s | page faults a step | peak RSS MB |")
    print("|---|---|---|---|")
    for name, runs in arms.items():
        step_s = statistics.median(t for r in runs for t in r["times"])
        faults = statistics.fmean(r["faults"] for r in runs)
        print(f"| {name} | {step_s:.3f} | {faults:,.0f} | {max(r['rss'] for r in runs):.0f} |")
    ratios = [
        statistics.median(d["times"]) / statistics.median(k["times"]) for d, k in zip(arms["default"], arms["kept"])
    ]
    print(
        f"\ndefault / kept, each round's medians: {', '.join(f'{x:.2f}' for x in ratios)}; "
        f"median {statistics.median(ratios):.2f}x"
    )


if __name__ == "__main__":
    run(main)
