"""Reproduce the paper's main comparison on the embedded default (or your data and LM) and write results/.

    python reproduce.py                       # quick budget, 3 seeds, ml-100k + smollm2-135m, CPU
    python reproduce.py --budget full

Runs each model with each seed (a run whose test_metrics.json exists is skipped, so an interrupted
reproduction resumes), then writes results/main_table.{csv,md} (mean and standard error over seeds),
results/paired.md (per-user paired differences on the same test users) and results/table1.md.
Rows: SASRec, GRU4Rec, BERT4Rec, E4SRec_M (the teacher), E4SRec_N (N layers, no distillation), SLMRec_N<-M.
"""

import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import fire
import numpy as np

from slmrec.metrics import METRICS
from slmrec.utils import save_json

BUDGETS = {
    # LLM-model steps (batch 16) and evaluation interval; SASRec always early-stops on its own.
    "quick": {"max_steps": 300, "eval_steps": 100},
    "full": {"max_steps": 600, "eval_steps": 100},
}


def run(cmd, out_dir, log_name="log.txt"):
    """Run a training command unless out_dir already has its results; its output goes to out_dir/log.txt."""
    out_dir = Path(out_dir)
    if (out_dir / "test_metrics.json").is_file():
        print(f"  done already: {out_dir}", flush=True)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"  running: {' '.join(cmd)}", flush=True)
    t = time.time()
    with open(out_dir / log_name, "w") as log:
        res = subprocess.run([sys.executable, *cmd], stdout=log, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}) after {time.time() - t:.0f}s; see {out_dir / log_name}")
    print(f"  finished in {time.time() - t:.0f}s", flush=True)


def mean_se(values):
    v = np.asarray(values, float)
    return v.mean(), (v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan"))


def main(budget: str = "quick", seeds: int = 3, data: str = "data/ml-100k", source: str = "ml-100k",
         base_model: str = "smollm2-135m", teacher_layers: int = 8, student_layers: int = 4, blocks: int = 4,
         runs: str = "out/repro", results: str = "results", single_seed_baselines: bool = False):
    """single_seed_baselines: train SASRec, GRU4Rec and BERT4Rec with the first seed only (saves time)."""
    steps = BUDGETS[budget]
    runs, results = Path(runs), Path(results)
    if not (Path(data) / "stats.json").is_file():
        run_prepare = [str(Path(__file__).parent / "datasets/process.py"), "--source", source, "--output_dir", data]
        subprocess.run([sys.executable, *run_prepare], check=True)
    M, N = teacher_layers, student_layers
    names = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "bert4rec": "BERT4Rec", "teacher": f"E4SRec_{M}", "e4srec_n": f"E4SRec_{N}", "slmrec": f"SLMRec_{N}<-{M}",
             "slmrec_no_norm": f"SLMRec_{N}<-{M} (D_cos+L_ms, lambda_norm=0)"}
    llm = ["--max_steps", str(steps["max_steps"]), "--eval_steps", str(steps["eval_steps"])]
    for seed in range(seeds):
        s = str(42 + seed)
        d = runs / f"seed{s}"
        print(f"seed {s}", flush=True)
        # SASRec embeddings come from the first seed's run: every LLM model shares one item table.
        if seed == 0 or not single_seed_baselines:
            for model, extra in [("sasrec", []), ("gru4rec", ["--num_layers", "1"]), ("bert4rec", [])]:
                run(["train_sr_trad.py", "--data", data, "--output_dir", str(d / model), "--seed", s,
                     "--model", model, *extra], d / model)
        emb = runs / "seed42" / "sasrec" / "item_embedding.pkl"
        if not emb.is_file():
            subprocess.run([sys.executable, "extract_emb.py", "--checkpoint", str(emb.parent), "--output", str(emb)],
                           check=True)
        common = ["--data", data, "--seed", s, *llm]
        run(["finetune.py", *common, "--item_embedding", str(emb), "--base_model", base_model,
             "--num_layers", str(M), "--output_dir", str(d / "teacher")], d / "teacher")
        run(["finetune.py", *common, "--item_embedding", str(emb), "--base_model", base_model,
             "--num_layers", str(N), "--output_dir", str(d / "e4srec_n")], d / "e4srec_n")
        run(["distill.py", *common, "--teacher", str(d / "teacher"), "--num_layers", str(N), "--blocks", str(blocks),
             "--output_dir", str(d / "slmrec")], d / "slmrec")
        # D_norm on raw hidden states dwarfs the item loss (see README): the same without it.
        run(["distill.py", *common, "--teacher", str(d / "teacher"), "--num_layers", str(N), "--blocks", str(blocks),
             "--lambda_norm", "0", "--output_dir", str(d / "slmrec_no_norm")], d / "slmrec_no_norm")
    write_results(runs, results, names, seeds, data, base_model, budget, steps, "python " + " ".join(sys.argv))


def _collect(runs, key, seeds):
    metrics, ranks = [], []
    for seed in range(seeds):
        d = runs / f"seed{42 + seed}" / key
        if (d / "test_metrics.json").is_file():
            metrics.append(json.loads((d / "test_metrics.json").read_text()))
            ranks.append(np.load(d / "test_ranks.npz")["candidates"])
    return metrics, ranks


def _num(x, digits, missing=""):
    return missing if np.isnan(x) else f"{x:.{digits}f}"


def write_results(runs, results, names, seeds, data, base_model, budget, steps, command):
    results.mkdir(parents=True, exist_ok=True)
    stats = json.loads((Path(data) / "stats.json").read_text())
    setting = (f"Data: {data} ({stats['users']} users, {stats['items']} items, test split, 1 positive + up to 999 "
               f"stored negatives). LM: {base_model}. Hardware: {platform.machine()} CPU, {os.cpu_count()} cores"
               f"{' (GPU: ' + _gpu() + ')' if _gpu() else ''}. Budget: '{budget}' — LLM models {steps['max_steps']} "
               f"steps of batch 16, evaluated every {steps['eval_steps']}; SASRec, GRU4Rec and BERT4Rec early-stopped (at most 200 epochs). "
               f"Seeds: {seeds} (42..{41 + seeds}); every LLM model uses the seed-42 SASRec item embeddings. "
               f"Command: {command}")
    rows, per_user = [], {}
    for key, name in names.items():
        metrics, ranks = _collect(runs, key, seeds)
        if not metrics:
            continue
        row = {"model": name, "seeds": len(metrics)}
        for k in METRICS:
            row[k], row[f"{k}_se"] = mean_se([m[k] for m in metrics])
        rows.append(row)
        per_user[name] = ranks
    with open(results / "main_table.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", *METRICS, *[f"{k}_se" for k in METRICS], "seeds"])
        for r in rows:
            w.writerow([r["model"], *[f"{r[k]:.5f}" for k in METRICS], *[_num(r[k + "_se"], 5) for k in METRICS],
                        r["seeds"]])
    lines = [f"# Main comparison (ours)\n\n{setting}\n",
             "Mean ± standard error over seeds.\n",
             "| model | seeds | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['seeds']} | " + " | ".join(
            f"{r[k]:.4f} ± {_num(r[k + '_se'], 4, '—')}" for k in METRICS) + " |")
    (results / "main_table.md").write_text("\n".join(lines) + "\n\nOne seed: no standard error (—).\n")
    (results / "paired.md").write_text(paired_report(per_user, names, setting))
    save_json(stats, results / "table1.json")
    (results / "table1.md").write_text(
        "# Table 1: dataset statistics (ours)\n\n| dataset | users | items | interactions | density | avg. length |"
        f"\n|---|---|---|---|---|---|\n| {Path(data).name} | {stats['users']:,} | {stats['items']:,} | "
        f"{stats['interactions']:,} | {stats['density']:.4%} | {stats['avg_sequence_length']:.1f} |\n\n"
        f"{stats['users_with_fewer_negatives']['test']} of {stats['users']} users have fewer than "
        f"{stats['num_negatives']} items outside their history: they rank all of them.\n")
    print((results / "main_table.md").read_text())
    print((results / "paired.md").read_text())


def paired_report(per_user, names, setting):
    """NDCG@10 differences per user (same users, same candidates), averaged over seeds paired by seed."""
    student, e4 = names["slmrec"], names["e4srec_n"]
    lines = ["# Paired per-user comparison of NDCG@10 (ours)\n", setting + "\n",
             "For each seed, the per-user NDCG@10 difference between two models on the same 938 test users and "
             "candidates; mean over users and seeds, with the standard error of that mean over users "
             "(a difference within about 2 standard errors is not a finding).\n",
             "| comparison | mean difference | standard error | seeds |", "|---|---|---|---|"]

    def ndcg10(r):
        r = np.asarray(r, float)
        return np.where(r < 10, 1 / np.log2(r + 2), 0.0)

    pairs = [(student, e4), (student, names["teacher"]), (names["slmrec_no_norm"], e4),
             (names["slmrec_no_norm"], student), (names["teacher"], e4), (names["teacher"], "SASRec")]
    for a, b in pairs:
        if a not in per_user or b not in per_user:
            continue
        k = min(len(per_user[a]), len(per_user[b]))
        if k == 0:
            continue
        diffs = np.concatenate([ndcg10(per_user[a][i]) - ndcg10(per_user[b][i]) for i in range(k)])
        per_seed_users = len(per_user[a][0])
        # users are the unit: average each user's difference over seeds, then the se over users
        d = diffs.reshape(k, per_seed_users).mean(0)
        lines.append(f"| {a} − {b} | {d.mean():+.4f} | {d.std(ddof=1) / np.sqrt(len(d)):.4f} | {k} |")
    return "\n".join(lines) + "\n"


def _gpu():
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else ""


if __name__ == "__main__":
    fire.Fire(main)
