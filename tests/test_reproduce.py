"""The reproduction: its plan and presets, resuming, the result tables and figures, and one tiny end-to-end run."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import reproduce
from slmrec import experiments
from slmrec.experiments import labels, make_config, plan
from slmrec.metrics import METRICS, metrics_from_ranks
from slmrec.records import record_dir
from slmrec.tables import PAPER_TABLE2, rows_of, write_all
from slmrec.errors import FlagError


def _keys(runs, seed):
    return [r.key for r in runs if r.seed == seed]


def flag(cmd, f):
    return cmd[cmd.index(f) + 1] if f in cmd else None


def test_plan_covers_every_table_and_figure():
    cfg = make_config("quick")
    runs = plan(cfg)
    sweep = [
        "e4srec_30",
        "slmrec_cos",
        "slmrec_cos_norm",
        "slmrec_cos_ms",
        "slmrec_b1",
        "slmrec_b2",
        "slmrec_online",
        "e4srec_1",
        "e4srec_2",
        "e4srec_16",
        "e4srec_30_layers",
    ]
    assert _keys(runs, 42) == ["sasrec", "gru4rec", "bert4rec", "e4srec_8", "e4srec_4", "slmrec", *sweep]
    # quick: the baselines and the main comparison get three seeds, the sweeps one
    assert _keys(runs, 43) == _keys(runs, 44) == ["sasrec", "gru4rec", "bert4rec", "e4srec_8", "e4srec_4", "slmrec"]
    assert "slmrec_online" in _keys(plan(make_config("full")), 44)
    for r in runs:
        cmd = r.command(cfg.runs)
        if r.spec.script == "distill.py":  # each student distils from its own seed's teacher
            assert flag(cmd, "--teacher").endswith(f"seed{r.seed}/e4srec_8")
        if r.spec.script in ("finetune.py", "distill.py"):  # trained to convergence: no step budget
            assert flag(cmd, "--max_steps") is None and flag(cmd, "--seed") == str(r.seed)
    by_key = {r.key: r.command(cfg.runs) for r in runs if r.seed == 42}
    assert [flag(by_key["slmrec_cos"], f) for f in ("--lambda_norm", "--lambda_ms")] == ["0", "0"]
    assert [flag(by_key["slmrec_cos_ms"], f) for f in ("--lambda_norm", "--lambda_ms")] == ["0", None]
    assert flag(by_key["slmrec"], "--lambda_norm") is None  # the default distillation: DistillConfig's own


def test_declarations_feed_the_tables_and_follow_the_depths():
    cfg = make_config("quick", teacher_layers=16, student_layers=8, depths=[2, 8, 16, 30])
    lab = labels(cfg)
    assert lab["slmrec"] == "SLMRec_8<-16" and lab["e4srec_16"] == "E4SRec_16"
    assert [k for k, _ in rows_of(cfg, "main")] == [
        "sasrec",
        "gru4rec",
        "bert4rec",
        "e4srec_30",
        "e4srec_16",
        "e4srec_8",
        "slmrec",
    ]
    assert dict(rows_of(cfg, "table4"))["e4srec_8"] == "none (E4SRec_8)"
    assert [k for k, _ in rows_of(cfg, "table5")] == ["e4srec_30", "e4srec_16", "e4srec_8", "slmrec"]
    assert all(
        len({r.key for r in plan(cfg) if r.seed == s}) == len([r for r in plan(cfg) if r.seed == s])
        for s in (42, 43, 44)
    )  # one directory per run


def test_preset_and_config_errors():
    cfg = make_config("full", "paper-music", base_model="/models/llama-7b")
    assert cfg.train["learning_rate"] == 2e-3 and cfg.train["max_steps"] == 800 and cfg.train["batch_size"] == 256
    assert cfg.distill["lambda_ms"] == 0.01 and cfg.depths == [1, 2, 4, 8, 16, 24, 32]
    by_key = {r.key: r.command(cfg.runs) for r in plan(cfg) if r.seed == 42}
    # paper-exact: one target per example at the response marker, squared D_norm at the final position
    assert flag(by_key["slmrec"], "--lambda_ms") == "0.01" and flag(by_key["slmrec"], "--norm_variant") == "squared"
    assert flag(by_key["slmrec"], "--feature_positions") == "final"
    assert flag(by_key["slmrec"], "--objective") == flag(by_key["e4srec_8"], "--objective") == "last_target"
    assert flag(by_key["e4srec_8"], "--readout") == "response" and flag(by_key["slmrec"], "--readout") is None
    assert make_config("quick", train={"max_steps": 7}).train["max_steps"] == 7
    with pytest.raises(ValueError, match="preset"):
        make_config("quick", "paper-books")
    with pytest.raises(ValueError, match="budget"):
        make_config("medium")
    with pytest.raises(ValueError, match="divide"):
        make_config("quick", block_sweep=[3])
    with pytest.raises(ValueError, match="depths"):
        make_config("quick", depths=[1, 2, 16])


def test_finished_run_is_recorded_skipped_and_another_command_refused(tmp_path, monkeypatch):
    cfg = make_config("quick", runs=str(tmp_path / "runs"), results=str(tmp_path / "results"))
    spec = experiments.RunSpec("e4srec_8", "E4SRec_8", "finetune.py", "main")
    run = experiments.Run(spec, 42, ["--data", "d", "--max_steps", "150"])
    out = run.dir(cfg.runs)
    out.mkdir(parents=True)
    (out / "test_metrics.json").write_text("{}")
    (out / "command.json").write_text(json.dumps(run.command(cfg.runs)))
    (out / "run_config.json").write_text(json.dumps({"hardware": "a machine", "precision": "bf16"}))
    (out / "checkpoint-9").mkdir()  # not kept: checkpoints stay in <runs>
    monkeypatch.setattr(experiments.subprocess, "run", lambda *a, **k: pytest.fail("should not run"))
    experiments.execute(run, cfg, 1, 1)  # done in <runs>: recorded, not run
    rec = tmp_path / "results" / "runs" / "seed42" / "e4srec_8"
    assert sorted(p.name for p in rec.iterdir()) == [
        "command.json",
        "record.json",
        "run_config.json",
        "test_metrics.json",
    ]
    assert json.loads((rec / "record.json").read_text())["hardware"] == "a machine"
    shutil.rmtree(tmp_path / "runs")  # another machine: only the record is left
    experiments.execute(run, cfg, 1, 1)  # recorded: skipped
    run.args[-1] = "600"
    with pytest.raises(FlagError, match="another command"):
        experiments.execute(run, cfg, 1, 1)


def _fake_runs(cfg, dataset):
    """Records of every planned run, as reproduce.py leaves them (results/runs/)."""
    rng = np.random.default_rng(0)
    written = {}
    (Path(cfg.results) / "runs").mkdir(parents=True)
    (Path(cfg.results) / "runs" / "dataset.json").write_text((dataset.path / "stats.json").read_text())
    for r in plan(cfg):
        d = record_dir(cfg.results, r.seed, r.key)
        d.mkdir(parents=True)
        (d / "record.json").write_text(json.dumps({"hardware": "Test CPU, 2 cores", "precision": "bf16"}))
        if r.spec.script == "evaluate.py":
            ranks = {f"layer_{l}": rng.integers(0, 30, dataset.num_users) for l in cfg.depths}
            (d / "layers.json").write_text(json.dumps({k: metrics_from_ranks(v) for k, v in ranks.items()}))
            np.savez(d / "layers_ranks.npz", **ranks)
            written[r.key] = ranks
            continue
        ranks = rng.integers(0, 30, dataset.num_users)
        timing = {"seconds_to_best": 60.0 * r.seed, "train_seconds": 120.0 * r.seed}
        (d / "test_metrics.json").write_text(json.dumps({**metrics_from_ranks(ranks), **timing}))
        np.savez(d / "test_ranks.npz", candidates=ranks, full=ranks)
        written.setdefault(r.key, []).append(ranks)
    return written


def ndcg(r):
    return np.where(r < 10, 1 / np.log2(r + 2), 0)


def test_tables_and_figures_from_runs(tiny_dataset, tmp_path):
    cfg = make_config(
        "quick", data=str(tiny_dataset.path), runs=str(tmp_path / "runs"), results=str(tmp_path / "results")
    )
    written = _fake_runs(cfg, tiny_dataset)
    eff = [
        {
            "model": m,
            "layers": l,
            "train_step_s": s,
            "steps_per_epoch": 10,
            "epoch_s": 10 * s,
            "inference_s": s,
            "test_users": 30,
            "trainable_params": p,
            "inference_params": 10 * p,
        }
        for m, l, s, p in [
            ("E4SRec_30", 30, 4.0, 100),
            ("E4SRec_8", 8, 1.0, 40),
            ("E4SRec_4", 4, 0.5, 20),
            ("SLMRec_4<-8", 4, 0.5, 20),
        ]
    ]
    eff[-1].update(cache_build_s=3.0, cache_mb=12.0, cache_rows=500)
    write_all(cfg, "python reproduce.py", eff)
    res = tmp_path / "results"
    rows = list(csv.DictReader(open(res / "main_table.csv")))
    assert [r["model"] for r in rows] == [
        "SASRec",
        "GRU4Rec",
        "BERT4Rec",
        "E4SRec_30",
        "E4SRec_8",
        "E4SRec_4",
        "SLMRec_4<-8",
    ]
    assert list(rows[0]) == ["model", *METRICS, *[f"{k}_se" for k in METRICS], "seeds"]
    vals = [metrics_from_ranks(r)["NDCG@10"] for r in written["slmrec"]]
    assert float(rows[6]["NDCG@10"]) == pytest.approx(np.mean(vals), abs=1e-5)
    assert float(rows[6]["NDCG@10_se"]) == pytest.approx(np.std(vals, ddof=1) / np.sqrt(3), abs=1e-5)
    assert rows[3]["NDCG@10_se"] == "" and rows[3]["seeds"] == "1"  # one seed: no standard error
    assert "| SLMRec_4<-8 | 3 | 43.0 ± 0.6 | 86.0 ± 1.2 |" in (res / "main_table.md").read_text()  # seeds 42-44

    diff = np.mean([ndcg(a) - ndcg(b) for a, b in zip(written["slmrec"], written["e4srec_4"])], axis=0)
    assert f"| SLMRec_4<-8 − E4SRec_4 | {diff.mean():+.4f} |" in (res / "paired.md").read_text()
    assert "| +D_cos,D_norm | 1 |" in (res / "table4_ablation.md").read_text()
    t5 = (res / "table5_efficiency.md").read_text()
    # ratios to the full-depth model; whole-run minutes from the student's record (seed 42: 120 s * 42)
    assert (
        "| SLMRec_4<-8 | 4 | 5 + 3 cache | 0.500 | 8.0x | 60 | 8.0x | 0.00 M | 20% | 0.0 M | 20% | 84.0 | 42.0 |" in t5
    )
    assert "training 6.6x faster per epoch, inference 8.0x faster, 13% of the trainable and 14%" in t5
    assert "500 rows, 12 MB, built in 3 s" in t5
    fig2 = (res / "figure2_depth.md").read_text()
    user_se = lambda r: np.std(ndcg(r), ddof=1) / np.sqrt(len(r))
    direct = written["e4srec_30_layers"]["layer_16"]
    assert (
        f"| 16 | {metrics_from_ranks(written['e4srec_16'][0])['NDCG@10']:.4f} ± "
        f"{user_se(written['e4srec_16'][0]):.4f} (users) | 1 | {metrics_from_ranks(direct)['NDCG@10']:.4f} ± "
        f"{user_se(direct):.4f} (users) | 1 |" in fig2
    )
    for f in ("main_table.md", "table4_ablation.md", "figure2_depth.md", "figure4_blocks.md", "paired.md"):
        text = (res / f).read_text()
        assert "Budget: 'quick'" in text and "every_position objective" in text
        assert "Hardware and precision: Test CPU, 2 cores, bf16 (every run)" in text
    for f in ("figure2_depth.png", "figure4_blocks.png"):
        assert (res / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    vs = (res / "vs_paper.md").read_text()
    assert f"| {PAPER_TABLE2['SLMRec_4<-8'][0]:.2f} |" in vs
    assert "| SLMRec_4<-8 / ours: SLMRec_4<-8 | 16.69 | 15.29 |" in vs
    assert f"| {tiny_dataset.num_users:,} |" in (res / "table1.md").read_text()


def test_reproduce_end_to_end_tiny(tiny_dataset, tiny_embedding, tiny_lm_dir, tmp_path, capsys):
    """The real command on a tiny dataset and a random 8-layer LM: every run, Table 5, the tables, a resume."""
    runs, res = tmp_path / "runs", tmp_path / "results"
    shutil.copytree(tiny_dataset.path, tmp_path / "data_copy")
    args = dict(
        data=str(tiny_dataset.path),
        base_model=str(tiny_lm_dir),
        teacher_layers=2,
        student_layers=1,
        blocks=1,
        depths="1,2",
        block_sweep="1",
        seeds=1,
        runs=str(runs),
        results=str(res),
        train={"max_steps": 2, "eval_steps": 2, "batch_size": 4, "eval_batch_size": 16, "precision": "fp32"},
        baseline_train={"epochs": 2},
    )
    reproduce.main(**args)
    rows = {r["model"]: r for r in csv.DictReader(open(res / "main_table.csv"))}
    assert set(rows) == {"SASRec", "GRU4Rec", "BERT4Rec", "E4SRec_2", "E4SRec_1", "SLMRec_1<-2"}
    assert all(0 <= float(r["MRR"]) <= 1 for r in rows.values())
    t5 = json.loads((res / "table5_efficiency.json").read_text())
    assert [r["model"] for r in t5] == ["E4SRec_2", "E4SRec_1", "SLMRec_1<-2"]  # the teacher is the deepest here
    assert t5[2]["trainable_params"] < t5[0]["trainable_params"] and t5[2]["inference_s"] > 0
    assert t5[2]["cache_rows"] > 0 and t5[0]["steps_per_epoch"] == 8  # 60 windows in batches of 4
    layers = json.loads((runs / "seed42" / "e4srec_2_layers" / "layers.json").read_text())
    teacher = json.loads((runs / "seed42" / "e4srec_2" / "test_metrics.json").read_text())
    assert layers["layer_2"]["MRR"] == pytest.approx(teacher["MRR"], abs=1e-6)  # the last layer is the model
    assert (res / "figure2_depth.png").is_file() and (res / "figure4_blocks.png").is_file()
    finished = capsys.readouterr().out.count(": finished in")
    reproduce.main(**args)  # everything finished: all skipped
    out = capsys.readouterr().out
    assert finished >= 10 and out.count("recorded already") == finished and "running" not in out
    tables = {f.name: f.read_bytes() for f in res.glob("*.md")}

    # Another machine: the records alone (no <runs>, no data) rebuild the same tables
    shutil.rmtree(runs)
    shutil.rmtree(tiny_dataset.path)
    reproduce.main(**args, tables_only=True)
    assert {f.name: f.read_bytes() for f in res.glob("*.md")} == tables
    # ... and a student not recorded yet trains its recorded teacher again first (its checkpoint is gone)
    shutil.copytree(tmp_path / "data_copy", tiny_dataset.path)
    shutil.rmtree(res / "runs" / "seed42" / "slmrec_online")
    reproduce.main(**args)
    out = capsys.readouterr().out
    assert "seed 42 e4srec_2: running" in out and "needed by a later run" in out
    assert "seed 42 slmrec_online: running" in out and out.count(": running") == 2
