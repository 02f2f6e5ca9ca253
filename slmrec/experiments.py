"""The reproduction plan: every run behind the paper's tables and figures, declared once (RunSpec: its name,
label, flags, and the tables it feeds), run in order as subprocesses. A run whose output exists is skipped if
it was made by the same command (and refused if not); an interrupted training run resumes from its last
checkpoint. slmrec/tables.py reads the same declarations."""

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .distill import DistillConfig
from .losses import block_pairs
from .records import is_recorded, record, record_dir, runs_root
from .errors import FlagError
from .files import load_json, run_lock, save_json
from .prepare import DEFAULT_DATA

ROOT = Path(__file__).resolve().parents[1]
FIRST_SEED = 42  # seeds are FIRST_SEED, FIRST_SEED + 1, ...; the first seed's SASRec gives every LM model its items

# Budgets for the LM-based models. Both train every model to its validation plateau (epochs with early
# stopping, slmrec/training.py:ELLMREC_TRAIN); they differ in seeds: the quick one gives the sweeps (ablation,
# depth, blocks, online) one seed and fits in a few hours on a 2-core CPU (docs/timings.md), the full one in
# about three times that.
# SASRec, GRU4Rec and BERT4Rec always early-stop on their own.
BUDGETS = {
    "quick": dict(seeds=3, sweep_seeds=1, baseline_seeds=3),
    "full": dict(seeds=3, sweep_seeds=3, baseline_seeds=3),
}

# Paper Table 6 (per Amazon dataset), paper-exact: one target per example read at the response marker, the
# squared D_norm at the final position, the paper's steps with batch 256 (its Table 5). "max_steps -1" for
# Movie means epoch-based training with a count the paper does not give: one epoch here.
_TABLE6 = dict(
    train=dict(objective="last_target", lr_scheduler="cosine", max_grad_norm=1.0, batch_size=256, patience=0),
    model=dict(readout="response"),
    distill=dict(lambda_cos=1.0, lambda_norm=0.1, norm_variant="squared", feature_positions="final", blocks=4),
)


def _preset(lr, steps, eval_steps, warmup, lambda_ms):
    train = dict(_TABLE6["train"], learning_rate=lr, eval_steps=eval_steps, warmup_steps=warmup)
    train.update(dict(max_steps=steps) if steps > 0 else dict(epochs=1))
    return dict(train=train, model=dict(_TABLE6["model"]), distill=dict(_TABLE6["distill"], lambda_ms=lambda_ms))


PRESETS = {
    "paper-cloth": _preset(3e-3, 1500, 50, 50, 1.0),
    "paper-movie": _preset(1e-3, -1, 100, 50, 1.0),
    "paper-music": _preset(2e-3, 800, 100, 100, 0.01),
    "paper-sport": _preset(2e-3, 2000, 100, 50, 0.1),
}


@dataclass
class ReproConfig:
    budget: str = "quick"
    preset: str | None = None
    data: str = DEFAULT_DATA
    source: str = "ml-100k"  # what prepare_data.py prepares into `data` when it is missing
    base_model: str = "smollm2-135m"
    teacher_layers: int = 8
    student_layers: int = 4
    depths: list = field(default_factory=lambda: [1, 2, 4, 8, 16, 30])  # Fig. 2; the largest is "E4SRec"
    block_sweep: list = field(default_factory=lambda: [1, 2, 4])  # Fig. 4
    seeds: int = 3  # the main comparison
    sweep_seeds: int = 1  # ablation, depth, blocks, online
    baseline_seeds: int = 3
    train: dict = field(default_factory=dict)  # finetune.py / distill.py training flags (TrainConfig, ExampleConfig)
    model: dict = field(default_factory=dict)  # finetune.py model flags (readout, ...)
    baseline_train: dict = field(default_factory=dict)  # train_sr_trad.py training flags
    distill: dict = field(default_factory=dict)  # distill.py flags over DistillConfig's defaults
    runs: str = "out/repro"
    results: str = "results"

    @property
    def full_depth(self):
        return max(self.depths)

    @property
    def blocks(self):
        return self.distill.get("blocks", DistillConfig.blocks)


def make_config(budget="quick", preset=None, train=None, distill_overrides=None, **overrides) -> ReproConfig:
    """A budget's seed counts, then a preset's hyper-parameters, then the `train` and `distill_overrides`
    flags and the other ReproConfig fields, each overriding the one before."""
    if budget not in BUDGETS:
        raise FlagError(f"--budget must be one of {sorted(BUDGETS)}, not {budget!r}")
    if preset is not None and preset not in PRESETS:
        raise FlagError(f"--preset must be one of {sorted(PRESETS)}, not {preset!r}")
    chosen = PRESETS.get(preset, {})
    cfg = ReproConfig(
        budget=budget,
        preset=preset,
        train={**chosen.get("train", {}), **(train or {})},
        model=dict(chosen.get("model", {})),
        distill={**chosen.get("distill", {}), **(distill_overrides or {})},
        **{**BUDGETS[budget], **overrides},
    )
    if preset:  # the paper's setting: seven depths of a 32-layer LLaMA
        cfg.depths = overrides.get("depths", [1, 2, 4, 8, 16, 24, 32])
    for name in ("depths", "block_sweep"):
        setattr(cfg, name, sorted({int(x) for x in getattr(cfg, name)}))
    cfg.sweep_seeds, cfg.baseline_seeds = min(cfg.sweep_seeds, cfg.seeds), min(cfg.baseline_seeds, cfg.seeds)
    check(cfg)
    return cfg


def check(cfg: ReproConfig):
    """Mistakes that would otherwise surface hours into the plan."""
    M, N = cfg.teacher_layers, cfg.student_layers
    if not 0 < N < M:
        raise FlagError(f"need 0 < student_layers < teacher_layers, got {N} and {M}")
    missing = {M, N} - set(cfg.depths)
    if missing:
        raise FlagError(f"--depths {cfg.depths} must include the teacher's and student's depths {sorted(missing)}")
    for b in {*cfg.block_sweep, cfg.blocks}:
        block_pairs(M, N, b)  # B must divide both depths: fails here with the reason
    if cfg.seeds < 1:
        raise FlagError("--seeds must be >= 1")


@dataclass(frozen=True)
class RunSpec:
    """One run of the reproduction, declared once."""

    key: str  # its directory under <runs>/seed<S>/
    label: str  # its name in every table
    script: str  # train_sr_trad.py, finetune.py, distill.py or evaluate.py
    seeds: str  # which seed count it gets: "baseline", "main" or "sweep"
    flags: dict = field(default_factory=dict)  # its own flags, over the budget's
    rows: dict = field(default_factory=dict)  # {output: its row label there}: main, table4, fig2, fig4, table5
    paper: str = ""  # its row in the paper's Tables 2/4 (tables.PAPER_TABLE2 / PAPER_TABLE4)
    vs: tuple = ()  # keys of the runs it is compared with per user (paired.md)
    done_file: str = "test_metrics.json"


def declare(cfg: ReproConfig) -> list:
    """Every run, in the order the tables list them. Labels come from the depths, so they follow M and N."""
    M, N, B, L = cfg.teacher_layers, cfg.student_layers, cfg.blocks, cfg.full_depth
    S = f"SLMRec_{N}<-{M}"
    e4 = {d: f"e4srec_{d}" for d in cfg.depths}

    def e4srec(d, seeds, rows, paper="", vs=()):
        return RunSpec(
            e4[d], f"E4SRec_{d}", "finetune.py", seeds, {"num_layers": d}, {**rows, "fig2": str(d)}, paper, vs
        )

    def slmrec(key, variant, changes, rows, paper="", vs=()):
        return RunSpec(
            key, f"{S} {variant}".strip(), "distill.py", "sweep" if changes else "main", changes, rows, paper, vs
        )

    specs = [
        RunSpec(m, label, "train_sr_trad.py", "baseline", {"model": m, **extra}, {"main": label}, label)
        for m, label, extra in [
            ("sasrec", "SASRec", {}),
            ("gru4rec", "GRU4Rec", {"num_layers": 1}),
            ("bert4rec", "BERT4Rec", {}),
        ]
    ]
    if L not in (M, N):
        specs.append(
            e4srec(L, "sweep", {"main": f"E4SRec_{L}", "table5": f"E4SRec_{L}"}, "E4SRec (all layers)", (e4[M],))
        )
    specs += [
        e4srec(M, "main", {"main": f"E4SRec_{M}", "table5": f"E4SRec_{M}"}, "E4SRec_8", (e4[N], "sasrec")),
        e4srec(N, "main", {"main": f"E4SRec_{N}", "table4": f"none (E4SRec_{N})", "table5": f"E4SRec_{N}"}, "E4SRec_4"),
        slmrec(
            "slmrec",
            "",
            {},
            {"main": S, "table4": "+D_cos,D_norm,L_ms", "fig4": f"B={B}", "table5": S},
            "SLMRec_4<-8",
            (e4[N], e4[M]),
        ),
        slmrec("slmrec_cos", "+D_cos", {"lambda_norm": 0, "lambda_ms": 0}, {"table4": "+D_cos"}, "+D_cos", (e4[N],)),
        slmrec(
            "slmrec_cos_norm",
            "+D_cos,D_norm",
            {"lambda_ms": 0},
            {"table4": "+D_cos,D_norm"},
            "+D_cos,D_norm",
            ("slmrec_cos",),
        ),
        slmrec(
            "slmrec_cos_ms",
            "+D_cos,L_ms",
            {"lambda_norm": 0},
            {"table4": "+D_cos,L_ms"},
            "+D_cos,L_ms",
            ("slmrec_cos", "slmrec"),
        ),
        *[
            slmrec(f"slmrec_b{b}", f"(B={b})", {"blocks": b}, {"fig4": f"B={b}"}, vs=("slmrec",))
            for b in cfg.block_sweep
            if b != B
        ],
        slmrec(
            "slmrec_online", f"(online KD, B={B})", {"kd_mode": "online"}, {"fig4": f"B={B}, online"}, vs=("slmrec",)
        ),
        *[e4srec(d, "sweep", {}) for d in cfg.depths if d not in (M, N, L)],
        RunSpec(
            f"{e4[L]}_layers",
            f"E4SRec_{L}, layer by layer",
            "evaluate.py",
            "sweep",
            {"layers": ",".join(map(str, cfg.depths))},
            {"fig2": "direct"},
            done_file="layers.json",
        ),
    ]
    return specs


def labels(cfg: ReproConfig) -> dict:
    return {s.key: s.label for s in declare(cfg)}


def seed_list(n):
    return [FIRST_SEED + i for i in range(n)]


def seed_dir(runs, seed) -> Path:
    return Path(runs) / f"seed{seed}"


def embedding_path(cfg) -> Path:
    """The one item table every LM-based model uses: the first seed's SASRec."""
    return seed_dir(cfg.runs, FIRST_SEED) / "sasrec" / "item_embedding.pkl"


@dataclass
class Run:
    spec: RunSpec
    seed: int
    args: list

    @property
    def key(self):
        return self.spec.key

    def dir(self, runs):
        return seed_dir(runs, self.seed) / self.key

    def command(self, runs):
        out = (
            ["--output", str(self.dir(runs) / self.spec.done_file)]
            if self.spec.script == "evaluate.py"
            else ["--output_dir", str(self.dir(runs))]
        )
        return [self.spec.script, *self.args, *out]


def _flags(d: dict):
    return [x for k, v in d.items() for x in (f"--{k}", str(v))]


def _args(cfg: ReproConfig, spec: RunSpec, seed: int) -> list:
    """The command-line flags of one run: data and seed, the budget's or preset's, then the run's own."""
    own = dict(spec.flags)
    if spec.script == "train_sr_trad.py":
        return ["--data", cfg.data, "--seed", str(seed), *_flags({**own, **cfg.baseline_train})]
    if spec.script == "evaluate.py":
        teacher = seed_dir(cfg.runs, seed) / f"e4srec_{cfg.full_depth}"
        return ["--checkpoint", str(teacher), "--data", cfg.data, *_flags(own)]
    common = ["--data", cfg.data, "--seed", str(seed), *_flags(cfg.train)]
    if spec.script == "finetune.py":
        return [
            *common,
            "--item_embedding",
            str(embedding_path(cfg)),
            "--base_model",
            cfg.base_model,
            *_flags(cfg.model),
            *_flags(own),
        ]
    teacher = seed_dir(cfg.runs, seed) / f"e4srec_{cfg.teacher_layers}"  # each student's own seed's teacher
    return [
        *common,
        "--teacher",
        str(teacher),
        "--num_layers",
        str(cfg.student_layers),
        *_flags({**cfg.distill, **own}),
    ]


def plan(cfg: ReproConfig) -> list:
    """Every run, in an order where each one's inputs (embeddings, teacher) come before it: the baselines, the
    main comparison for every seed, then the sweeps, so a cut-short reproduction still has its main table."""
    counts = {"baseline": cfg.baseline_seeds, "main": cfg.seeds, "sweep": cfg.sweep_seeds}
    specs = declare(cfg)
    runs = []
    for group in ("baseline", "main", "sweep"):
        for seed in seed_list(counts[group]):
            runs += [Run(s, seed, _args(cfg, s, seed)) for s in specs if s.seeds == group]
    return runs


def _prepare_data(cfg):
    if not (Path(cfg.data) / "stats.json").is_file():
        cmd = [sys.executable, str(ROOT / "prepare_data.py"), "--source", cfg.source, "--output_dir", cfg.data]
        subprocess.run(cmd, check=True)
    stats, kept = load_json(Path(cfg.data) / "stats.json"), runs_root(cfg.results) / "dataset.json"
    if kept.is_file() and load_json(kept)["fingerprint"] != stats["fingerprint"]:
        raise FlagError(
            f"{cfg.data} is dataset {stats['fingerprint']}, but the runs recorded in {kept.parent} were "
            f"made on {load_json(kept)['fingerprint']}: use another --results folder"
        )
    save_json(stats, kept)


def _ensure_embedding(cfg):
    """The first seed's SASRec item table, exported from its run, or put back from its record (a run on another
    machine or in an earlier sitting), so every LM-based model of a reproduction uses the same table."""
    emb = embedding_path(cfg)
    kept = record_dir(cfg.results, FIRST_SEED, "sasrec") / emb.name
    if not emb.is_file() and kept.is_file():
        emb.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(kept, emb)
    if not emb.is_file():
        subprocess.run(
            [sys.executable, str(ROOT / "extract_emb.py"), "--checkpoint", str(emb.parent), "--output", str(emb)],
            check=True,
        )
    if not kept.is_file():
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(emb, kept)


def dependency(cfg, run: Run):
    """(seed, key) of the run whose checkpoint this one reads: a student's teacher, the layer-by-layer
    evaluation's full-depth model; None otherwise."""
    if run.spec.script == "distill.py":
        return run.seed, f"e4srec_{cfg.teacher_layers}"
    if run.spec.script == "evaluate.py":
        return run.seed, f"e4srec_{cfg.full_depth}"
    return None


def execute(run: Run, cfg, index, total, needed=False):
    """Run one step unless it is recorded already (or done in <runs>, then recorded); a run made by another
    command is an error, not a silent reuse. needed: its checkpoint is missing and a later run reads it, so
    it runs again even when recorded (and its record is replaced by the new run's)."""
    out, rec = run.dir(cfg.runs), record_dir(cfg.results, run.seed, run.key)
    cmd = run.command(cfg.runs)
    label = f"[{index}/{total}] seed {run.seed} {run.key}"
    for stamp in (out / "command.json", rec / "command.json"):
        if stamp.is_file() and load_json(stamp) != cmd:
            raise FlagError(
                f"{stamp.parent} was made by another command: {load_json(stamp)}, not {cmd}; remove "
                f"it, or use other --runs and --results folders"
            )
    if is_recorded(rec, run.spec.done_file) and not needed:
        print(f"{label}: recorded already ({rec})", flush=True)
        return
    if (out / run.spec.done_file).is_file():
        record(out, rec)
        print(f"{label}: done already; recorded in {rec}", flush=True)
        return
    resume = run.spec.script != "evaluate.py" and any(out.glob("checkpoint-*"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.json").write_text(json.dumps(cmd))
    print(
        f"{label}: {'resuming' if resume else 'running'} python {' '.join(cmd)}"
        f"{' (its checkpoint is needed by a later run)' if needed else ''}\n"
        f"    progress: tail -f {out / 'log.txt'}",
        flush=True,
    )
    t = time.time()
    with open(out / "log.txt", "a") as log:
        res = subprocess.run(
            [sys.executable, str(ROOT / cmd[0]), *cmd[1:], *(["--resume"] if resume else [])],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if res.returncode != 0:
        raise FlagError(f"{label} failed ({res.returncode}) after {time.time() - t:.0f}s; see {out / 'log.txt'}")
    record(out, rec, time.time() - t)
    print(f"{label}: finished in {time.time() - t:.0f}s; recorded in {rec}", flush=True)


def run_plan(cfg: ReproConfig, runs: list):
    """Run what is not recorded yet, each run after the runs whose checkpoints it reads: a recorded teacher
    whose checkpoint is gone (another machine, a lost out/) is trained again first."""
    _prepare_data(cfg)
    everything = {(r.seed, r.key): r for r in plan(cfg)}
    todo, needed = [], set()
    for run in runs:
        if is_recorded(record_dir(cfg.results, run.seed, run.key), run.spec.done_file):
            todo.append(run)
            continue
        dep = dependency(cfg, run)
        if dep and not (everything[dep].dir(cfg.runs) / "model.safetensors").is_file():
            if is_recorded(record_dir(cfg.results, *dep), everything[dep].spec.done_file):
                needed.add(dep)
            if everything[dep] not in todo:
                todo.append(everything[dep])
        todo.append(run)
    t = time.time()
    with run_lock(cfg.runs):  # one reproduction per runs folder
        for i, run in enumerate(todo, 1):
            if run.spec.script != "train_sr_trad.py":
                _ensure_embedding(cfg)
            execute(run, cfg, i, len(todo), needed=(run.seed, run.key) in needed)
    print(f"all {len(todo)} runs done in {time.time() - t:.0f}s", flush=True)
