"""The reproduction plan: every run behind the paper's tables and figures, with its command line, run in
order as subprocesses. A run whose output exists is skipped if it was made by the same command (and refused
if not); an interrupted training run resumes from its last checkpoint."""

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .losses import block_pairs

ROOT = Path(__file__).resolve().parents[1]

# Budgets for the LLM-based models (batch 16 unless a preset says otherwise). The quick one ends within an
# hour on a 2-core CPU with bf16 (48 min measured, see README); its sweeps (ablation, depth, blocks, online)
# get one seed, the main comparison three. SASRec, GRU4Rec and BERT4Rec always early-stop on their own.
BUDGETS = {
    "quick": dict(max_steps=150, eval_steps=150, seeds=3, sweep_seeds=1, baseline_seeds=1),
    "full": dict(max_steps=600, eval_steps=100, seeds=3, sweep_seeds=3, baseline_seeds=3),
}

# Paper Table 6 (per Amazon dataset), for finetune.py and distill.py. The paper's Table 5 trains with batch
# 256; "max_steps -1" for Movie means epoch-based training with a count the paper does not give: one epoch here.
_TABLE6 = dict(lr_scheduler="cosine", max_grad_norm=1.0, batch_size=256, lambda_cos=1.0, lambda_norm=0.1, blocks=4)
PRESETS = {
    "paper-cloth": dict(_TABLE6, learning_rate=3e-3, max_steps=1500, eval_steps=50, warmup_steps=50, lambda_ms=1.0),
    "paper-movie": dict(_TABLE6, learning_rate=1e-3, max_steps=-1, epochs=1, eval_steps=100, warmup_steps=50,
                        lambda_ms=1.0),
    "paper-music": dict(_TABLE6, learning_rate=2e-3, max_steps=800, eval_steps=100, warmup_steps=100,
                        lambda_ms=0.01),
    "paper-sport": dict(_TABLE6, learning_rate=2e-3, max_steps=2000, eval_steps=100, warmup_steps=50,
                        lambda_ms=0.1),
}
_DISTILL_KEYS = ("lambda_cos", "lambda_norm", "lambda_ms", "blocks")


@dataclass
class ReproConfig:
    budget: str = "quick"
    preset: str | None = None
    data: str = "data/ml-100k"
    source: str = "ml-100k"  # what datasets/process.py prepares into `data` when it is missing
    base_model: str = "smollm2-135m"
    teacher_layers: int = 8
    student_layers: int = 4
    depths: list = field(default_factory=lambda: [1, 2, 4, 8, 16, 30])  # Fig. 2; the largest is "E4SRec"
    block_sweep: list = field(default_factory=lambda: [1, 2, 4])  # Fig. 4
    seeds: int = 3  # the main comparison
    sweep_seeds: int = 1  # ablation, depth, blocks, online
    baseline_seeds: int = 1
    train: dict = field(default_factory=dict)  # finetune.py / distill.py training flags
    baseline_train: dict = field(default_factory=dict)  # train_sr_trad.py training flags
    distill: dict = field(default_factory=dict)  # lambda_cos, lambda_norm, lambda_ms, blocks
    runs: str = "out/repro"
    results: str = "results"

    @property
    def full_depth(self):
        return max(self.depths)


def make_config(budget="quick", preset=None, train=None, distill_overrides=None, **overrides) -> ReproConfig:
    """A budget's steps and seed counts, then a preset's hyper-parameters, then the `train` and
    `distill_overrides` flags and the other ReproConfig fields, each overriding the one before."""
    if budget not in BUDGETS:
        raise ValueError(f"--budget must be one of {sorted(BUDGETS)}, not {budget!r}")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, not {preset!r}")
    b = dict(BUDGETS[budget])
    counts = {k: b.pop(k) for k in ("seeds", "sweep_seeds", "baseline_seeds")}
    chosen = dict(PRESETS.get(preset, {}))
    distill = {"lambda_cos": 1.0, "lambda_norm": 0.1, "lambda_ms": 1.0, "blocks": 4}
    chosen_distill = {k: chosen.pop(k) for k in _DISTILL_KEYS if k in chosen}
    distill = {**distill, **chosen_distill, **(distill_overrides or {})}
    train = {**b, **chosen, **(train or {})}
    if preset:  # the paper's setting: seven depths of a 32-layer LLaMA
        overrides.setdefault("depths", [1, 2, 4, 8, 16, 24, 32])
    cfg = ReproConfig(budget=budget, preset=preset, train=train, distill=distill, **{**counts, **overrides})
    for name in ("depths", "block_sweep"):
        setattr(cfg, name, sorted({int(x) for x in getattr(cfg, name)}))
    cfg.sweep_seeds, cfg.baseline_seeds = min(cfg.sweep_seeds, cfg.seeds), min(cfg.baseline_seeds, cfg.seeds)
    check(cfg)
    return cfg


def check(cfg: ReproConfig):
    """Mistakes that would otherwise surface hours into the plan."""
    M, N = cfg.teacher_layers, cfg.student_layers
    if not 0 < N < M:
        raise ValueError(f"need 0 < student_layers < teacher_layers, got {N} and {M}")
    missing = {M, N} - set(cfg.depths)
    if missing:
        raise ValueError(f"--depths {cfg.depths} must include the teacher's and student's depths {sorted(missing)}")
    for b in {*cfg.block_sweep, cfg.distill["blocks"]}:
        block_pairs(M, N, b)  # B must divide both depths: fails here with the reason
    if cfg.seeds < 1:
        raise ValueError("--seeds must be >= 1")


@dataclass
class Run:
    table: str  # the table or figure that needs it
    seed: int
    key: str  # directory under <runs>/seed<seed>/
    script: str
    args: list
    done_file: str = "test_metrics.json"

    def dir(self, runs):
        return Path(runs) / f"seed{self.seed}" / self.key

    def command(self, runs):
        return [self.script, *self.args, *self.out_flag(runs)]

    def out_flag(self, runs):
        if self.script == "evaluate.py":
            return ["--output", str(self.dir(runs) / self.done_file)]
        return ["--output_dir", str(self.dir(runs))]


def _flags(d: dict):
    return [x for k, v in d.items() for x in (f"--{k}", str(v))]


def seed_list(n):
    return [42 + i for i in range(n)]


def plan(cfg: ReproConfig) -> list:
    """Every run, in an order where each one's inputs (embeddings, teacher) come before it: the main
    comparison for every seed first, then the sweeps, so a cut-short reproduction still has its main table."""
    M, N, B, L = cfg.teacher_layers, cfg.student_layers, cfg.distill["blocks"], cfg.full_depth
    runs = []
    for seed in seed_list(cfg.baseline_seeds):
        for model, extra in [("sasrec", []), ("gru4rec", ["--num_layers", "1"]), ("bert4rec", [])]:
            runs.append(Run("main", seed, model, "train_sr_trad.py",
                            ["--data", cfg.data, "--seed", str(seed), "--model", model, *extra,
                             *_flags(cfg.baseline_train)]))
    emb = str(Path(cfg.runs) / "seed42" / "sasrec" / "item_embedding.pkl")  # one item table for every LLM model

    def e4srec(table, seed, depth):
        runs.append(Run(table, seed, f"e4srec_{depth}", "finetune.py",
                        ["--data", cfg.data, "--seed", str(seed), *_flags(cfg.train), "--item_embedding", emb,
                         "--base_model", cfg.base_model, "--num_layers", str(depth)]))

    def student(table, seed, key, **changes):
        teacher = str(Path(cfg.runs) / f"seed{seed}" / f"e4srec_{M}")
        runs.append(Run(table, seed, key, "distill.py",
                        ["--data", cfg.data, "--seed", str(seed), *_flags(cfg.train), "--teacher", teacher,
                         "--num_layers", str(N), *_flags({**cfg.distill, **changes})]))

    for seed in seed_list(cfg.seeds):
        e4srec("main", seed, M)
        e4srec("main", seed, N)
        student("main", seed, "slmrec")
    for seed in seed_list(cfg.sweep_seeds):
        student("table4", seed, "slmrec_cos", lambda_norm=0, lambda_ms=0)
        student("table4", seed, "slmrec_cos_norm", lambda_ms=0)
        student("table4", seed, "slmrec_cos_ms", lambda_norm=0)
        for b in cfg.block_sweep:
            if b != B:
                student("fig4", seed, f"slmrec_b{b}", blocks=b)
        student("fig4", seed, "slmrec_online", kd_mode="online")
        for depth in cfg.depths:
            if depth not in (M, N):
                e4srec("main" if depth == L else "fig2", seed, depth)
        runs.append(Run("fig2", seed, f"e4srec_{L}_layers", "evaluate.py",
                        ["--checkpoint", str(Path(cfg.runs) / f"seed{seed}" / f"e4srec_{L}"), "--data", cfg.data,
                         "--layers", ",".join(map(str, cfg.depths))], done_file="layers.json"))
    return runs


def _prepare_data(cfg):
    if not (Path(cfg.data) / "stats.json").is_file():
        cmd = [sys.executable, str(ROOT / "datasets/process.py"), "--source", cfg.source, "--output_dir", cfg.data]
        subprocess.run(cmd, check=True)


def _ensure_embedding(cfg):
    emb = Path(cfg.runs) / "seed42" / "sasrec" / "item_embedding.pkl"
    if not emb.is_file():
        subprocess.run([sys.executable, str(ROOT / "extract_emb.py"), "--checkpoint", str(emb.parent),
                        "--output", str(emb)], check=True)


def execute(run: Run, runs_dir, index, total):
    """Run one step unless done; a finished run made by another command is an error, not a silent reuse."""
    out = run.dir(runs_dir)
    cmd = run.command(runs_dir)
    stamp = out / "command.json"
    label = f"[{index}/{total}] seed {run.seed} {run.key} ({run.table})"
    if stamp.is_file() and json.loads(stamp.read_text()) != cmd:
        raise SystemExit(f"{out} was made by another command:\n  {json.loads(stamp.read_text())}\nnot\n  {cmd}\n"
                         f"Remove it, or use another --runs directory.")
    if (out / run.done_file).is_file():
        print(f"{label}: done already", flush=True)
        return
    resume = run.script != "evaluate.py" and any(out.glob("checkpoint-*"))
    out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(cmd))
    print(f"{label}: {'resuming' if resume else 'running'} python {' '.join(cmd)}\n"
          f"    progress: tail -f {out / 'log.txt'}", flush=True)
    t = time.time()
    with open(out / "log.txt", "a") as log:
        res = subprocess.run([sys.executable, str(ROOT / cmd[0]), *cmd[1:], *(["--resume"] if resume else [])],
                             stdout=log, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        raise SystemExit(f"{label} failed ({res.returncode}) after {time.time() - t:.0f}s; see {out / 'log.txt'}")
    print(f"{label}: finished in {time.time() - t:.0f}s", flush=True)


def run_plan(cfg: ReproConfig, runs: list):
    _prepare_data(cfg)
    t = time.time()
    for i, run in enumerate(runs, 1):
        if run.script != "train_sr_trad.py":
            _ensure_embedding(cfg)
        execute(run, cfg.runs, i, len(runs))
    print(f"all {len(runs)} runs done in {time.time() - t:.0f}s", flush=True)
