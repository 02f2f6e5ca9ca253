"""The README's pipeline end to end on an Amazon-shaped dataset at a fraction of Clothing (default a tenth:
122 k users, 38 k items), with bounded budgets, and what each command cost: its wall time and peak RSS (of the
command's own process, os.wait4), as a table. Every stage is the command a user runs; a stage whose output is
already complete is skipped, so an interrupted run resumes.

    python benchmarks/scale_e2e.py --workdir /tmp/e2e                     # 10% of Clothing, SmolLM2
    python benchmarks/scale_e2e.py --workdir /tmp/e2e --fraction 0.01 --llm_steps 50

Stages: the ratings file (benchmarks/scale.py's generator), prepare_data.py, train_sr_trad.py (SASRec for
--sasrec_epochs epochs, validated each epoch), extract_emb.py, finetune.py (the 8-layer teacher for --llm_steps
steps, one validation at the end), distill.py (the 4-layer student for --llm_steps steps, the live teacher:
a cache of the teacher's states for every training window would cost a teacher pass over all of them).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from slmrec.cli import run
from slmrec.machine import hardware

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd, log):
    """(seconds, peak RSS MB) of one command, its output appended to log. The peak is the child's own
    (os.wait4), which Linux starts from this process's size at the fork."""
    t = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit status {status}); see {log}")
    return time.perf_counter() - t, usage.ru_maxrss / 1024


def main(workdir: str, fraction: float = 0.1, sasrec_epochs: int = 2, llm_steps: int = 100):
    w = Path(workdir)
    w.mkdir(parents=True, exist_ok=True)
    log, results = w / "log.txt", w / "stages.json"
    done = json.loads(results.read_text()) if results.is_file() else {}
    py = sys.executable
    src, data = w / f"ratings-{fraction:g}.csv", w / "data"
    stages = [
        ("prepare_data.py", [py, "prepare_data.py", str(src), str(data)], data / "stats.json"),
        (
            f"train_sr_trad.py, {sasrec_epochs} epochs",
            [
                py,
                "train_sr_trad.py",
                "--data",
                str(data),
                "--output_dir",
                str(w / "sasrec"),
                "--epochs",
                str(sasrec_epochs),
            ],
            w / "sasrec" / "test_metrics.json",
        ),
        (
            "extract_emb.py",
            [py, "extract_emb.py", "--checkpoint", str(w / "sasrec")],
            w / "sasrec" / "item_embedding.pkl",
        ),
        (
            f"finetune.py, teacher, 8 layers, {llm_steps} steps",
            [
                py,
                "finetune.py",
                "--data",
                str(data),
                "--item_embedding",
                str(w / "sasrec" / "item_embedding.pkl"),
                "--output_dir",
                str(w / "teacher"),
                "--max_steps",
                str(llm_steps),
                "--eval_steps",
                str(llm_steps),
            ],
            w / "teacher" / "test_metrics.json",
        ),
        (
            f"distill.py, student, 4 layers, {llm_steps} steps, live teacher",
            [
                py,
                "distill.py",
                "--teacher",
                str(w / "teacher"),
                "--output_dir",
                str(w / "student"),
                "--max_steps",
                str(llm_steps),
                "--eval_steps",
                str(llm_steps),
                "--state_cache_max_gb",
                "0",
            ],
            w / "student" / "test_metrics.json",
        ),
    ]
    if not src.is_file():
        # in its own process: a child's peak RSS starts from its parent's size at the fork, so this process
        # stays small (the stages' peaks would otherwise include the generator's frames)
        t = time.perf_counter()
        lines = subprocess.run(
            [
                py,
                "-c",
                f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); from scale "
                f"import generate; print(generate({str(src)!r}, {fraction}))",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[-1]
        done["ratings file"] = {"seconds": time.perf_counter() - t, "note": f"{int(lines):,} lines"}
    for name, cmd, output in stages:
        if name in done and output.exists():
            continue
        seconds, peak = timed(cmd, log)
        done[name] = {"seconds": seconds, "peak_rss_mb": peak}
        if output.suffix == ".json" and output.name == "test_metrics.json":
            m = json.loads(output.read_text())
            done[name]["note"] = (
                f"test NDCG@10 {m['NDCG@10']:.4f} (stored candidates), full ranking "
                f"{m['full']['NDCG@10']:.4f}; {m.get('train_seconds', 0) / 60:.1f} min training"
            )
        results.write_text(json.dumps(done, indent=1))
        print(name, done[name], file=sys.stderr, flush=True)
    stats = json.loads((data / "stats.json").read_text()) if (data / "stats.json").is_file() else {}
    print(
        f"{fraction:g} of Clothing's shape: {stats.get('users', '?'):,} users, {stats.get('items', '?'):,} items, "
        f"{stats.get('interactions', '?'):,} interactions; {hardware()}\n"
    )
    print("| stage | minutes | peak RSS GB | notes |\n|---|---|---|---|")
    for name, r in done.items():
        rss = f"{r['peak_rss_mb'] / 1024:.2f}" if "peak_rss_mb" in r else ""
        print(f"| {name} | {r['seconds'] / 60:.1f} | {rss} | {r.get('note', '')} |")


if __name__ == "__main__":
    run(main)
