"""results/: the paper's tables and figures from finished reproduction runs, each stating its setting."""

import csv
from pathlib import Path

import numpy as np

from .experiments import ReproConfig, declare, labels, seed_list
from .metrics import METRICS, ndcg_per_user
from .examples import ExampleConfig
from .model import ELLMRecConfig
from .records import RECORD, machine, record_dir, runs_root
from .training import ELLMREC_TRAIN
from .files import load_json, save_json

# Paper numbers (%), Amazon 2018 with LLaMA-7B on an A100 (Tables 2, 4, 5), for the rows we reproduce.
PAPER_METRICS = ("HR@1", "HR@5", "NDCG@5", "MRR")
PAPER_TABLE2 = {  # model: (Cloth HR@1, HR@5, NDCG@5, MRR, Movie HR@1, HR@5, NDCG@5, MRR)
    "GRU4Rec": (13.79, 15.46, 14.64, 15.15, 10.56, 19.47, 15.11, 15.46),
    "BERT4Rec": (13.60, 14.66, 14.14, 14.59, 9.68, 14.91, 12.40, 12.74),
    "SASRec": (13.08, 16.94, 15.01, 15.76, 5.57, 16.80, 11.17, 12.08),
    "E4SRec (all layers)": (16.71, 19.45, 18.09, 18.77, 14.74, 23.79, 19.45, 19.74),
    "E4SRec_8": (15.30, 18.54, 16.91, 17.60, 13.32, 22.49, 17.99, 18.46),
    "E4SRec_4": (14.58, 18.05, 16.32, 17.01, 11.80, 21.54, 16.73, 17.20),
    "SLMRec_4<-8": (16.69, 19.47, 18.07, 18.74, 15.29, 24.25, 19.90, 20.36),
}
PAPER_TABLE4 = {
    "+D_cos": (16.10, 18.85, 17.48, 18.17, 14.83, 23.08, 19.08, 19.45),
    "+D_cos,D_norm": (16.28, 19.12, 17.69, 18.40, 14.86, 23.89, 19.36, 19.84),
    "+D_cos,L_ms": (16.85, 19.05, 17.96, 18.59, 15.05, 23.48, 19.40, 19.76),
    "+D_cos,D_norm,L_ms": (16.69, 19.47, 18.07, 18.74, 15.29, 24.25, 19.90, 20.36),
}
PAPER_TABLE5 = {  # training h/epoch, inference h, trainable B, inference B (mean of four datasets)
    "E4SRec (32 layers)": (3.95, 0.415, 0.023, 6.631),
    "SLMRec_4<-8": (0.60, 0.052, 0.003, 0.944),
}


def sweep_note(cfg):
    seeds = seed_list(cfg.sweep_seeds)
    return (
        f"\nEvery row here uses the sweep seeds only ({len(seeds)}: {seeds[0]}..{seeds[-1]}), so rows "
        "compare on the same seeds; main_table.md has the means over all seeds of the shared rows."
    )


def rows_of(cfg, output) -> list:
    """[(run key, row label)] of the declared runs an output shows, in declaration order."""
    return [(spec.key, spec.rows[output]) for spec in declare(cfg) if output in spec.rows]


def collect(cfg: ReproConfig, key, seeds=None):
    """(test metrics, per-user candidate ranks, seeds) of every recorded seed (of `seeds`) of one run key."""
    metrics, ranks, found = [], [], []
    for seed in seeds or seed_list(cfg.seeds):
        d = record_dir(cfg.results, seed, key)
        if (d / "test_metrics.json").is_file():
            metrics.append(net_times(load_json(d / "test_metrics.json"), d))
            ranks.append(np.load(d / "test_ranks.npz")["candidates"])
            found.append(seed)
    return metrics, ranks, found


def mean_se(values):
    v = np.asarray(values, float)
    return v.mean(), (v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan"))


def summary(cfg, key, seeds=None):
    """Mean and standard error over seeds of each metric; "NDCG@10_user_se", the standard error over test
    users of a single run's NDCG@10 (for one seed: the uncertainty from which users are in the test set);
    "machines", the recorded hardware and precision of its runs."""
    metrics, ranks, seeds = collect(cfg, key, seeds)
    if not metrics:
        return None
    row = {
        "seeds": len(seeds),
        "NDCG@10_user_se": user_se(ranks[0]),
        "machines": sorted({machine(record_dir(cfg.results, s, key)) for s in seeds}),
    }
    for k in METRICS:
        row[k], row[k + "_se"] = mean_se([m[k] for m in metrics])
    return row


def user_se(ranks):
    """Standard error over users of NDCG@10 from one run's per-user ranks."""
    v = ndcg_per_user(ranks, 10).numpy()
    return v.std(ddof=1) / np.sqrt(len(v))


def bar(row):
    """The error bar of a point's NDCG@10: the standard error over seeds, or with one seed, over users."""
    return row["NDCG@10_user_se"] if np.isnan(row["NDCG@10_se"]) else row["NDCG@10_se"]


def _pm(row, k, scale=1.0, digits=4):
    se = row[k + "_se"]
    return f"{row[k] * scale:.{digits}f} ± " + ("—" if np.isnan(se) else f"{se * scale:.{digits}f}")


def dataset_stats(cfg) -> dict:
    """The statistics of the dataset the recorded runs were made on (kept with them, so tables need no data)."""
    return load_json(runs_root(cfg.results) / "dataset.json")


def recorded_machines(cfg) -> list:
    return sorted({machine(rec.parent) for rec in runs_root(cfg.results).glob("seed*/*/record.json")})


def setting(cfg: ReproConfig, command) -> str:
    stats = dataset_stats(cfg)
    machines = recorded_machines(cfg)
    t = {**ELLMREC_TRAIN, **cfg.train}
    if t.get("max_steps", -1) > 0:
        steps = f"{t['max_steps']} steps"
    else:
        steps = f"up to {t['epochs']} epochs" + (
            f", early stop after {t['patience']} validations without a better MRR" if t.get("patience") else ""
        )
    objective = t.get("objective", ExampleConfig.objective)
    readout = cfg.model.get("readout", ELLMRecConfig.readout)
    where = (
        f"Hardware and precision: {machines[0]} (every run)"
        if len(machines) == 1
        else f"Hardware and precision: the runs ran on {len(machines)} machines ({'; '.join(machines)}): "
        f"each row names its own"
    )
    return (
        f"Data: {cfg.data} ({stats['users']:,} users, {stats['items']:,} items; test split, 1 positive + up to "
        f"{stats['num_negatives']} stored negatives). LM: {cfg.base_model}. {where}. Budget: '{cfg.budget}'"
        f"{' + preset ' + cfg.preset if cfg.preset else ''}: LM-based models trained with the {objective} "
        f"objective ({readout} readout), {steps} of batch {t['batch_size']}, validation "
        f"{'every ' + str(t['eval_steps']) + ' steps' if t.get('eval_steps') else 'once per epoch'} "
        f"(best by validation MRR); SASRec, GRU4Rec, BERT4Rec early-stopped. Seeds: main comparison "
        f"{cfg.seeds}, sweeps {cfg.sweep_seeds}, conventional baselines {cfg.baseline_seeds}; every LM-based "
        f"model uses the seed-{seed_list(1)[0]} SASRec item table. Command: `{command}`"
    )


def metric_table(cfg, keyed_labels, title="", head="", note="", seeds=None) -> tuple:
    """keyed_labels: [(run key, row label)]."""
    per_row = len(recorded_machines(cfg)) > 1
    lines = [
        title,
        "",
        head,
        "",
        "| model | seeds | " + " | ".join(METRICS) + " |" + (" ran on |" if per_row else ""),
        "|---|---|" + "---|" * (len(METRICS) + per_row),
    ]
    rows = []
    for key, label in keyed_labels:
        row = summary(cfg, key, seeds)
        if row is None:
            continue
        rows.append((label, row))
        lines.append(
            f"| {label} | {row['seeds']} | "
            + " | ".join(_pm(row, k) for k in METRICS)
            + " |"
            + (f" {'; '.join(row['machines'])} |" if per_row else "")
        )
    lines += ["", "Mean ± standard error over seeds (— : one seed, no standard error)." + note]
    return "\n".join(lines) + "\n", rows


def training_time(cfg, keyed_labels) -> str:
    """Minutes of training to the best validation checkpoint, and in all (early stop included), per model."""
    lines = ["| model | seeds | minutes to the best validation | minutes in all |", "|---|---|---|---|"]
    for key, label in keyed_labels:
        metrics, _, seeds = collect(cfg, key)
        timed = [m for m in metrics if m.get("seconds_to_best") is not None]
        if timed:
            cells = [mean_se([m[k] / 60 for m in timed]) for k in ("seconds_to_best", "train_seconds")]
            lines.append(
                f"| {label} | {len(timed)} | "
                + " | ".join(f"{v:.1f}" + ("" if np.isnan(se) else f" ± {se:.1f}") for v, se in cells)
                + " |"
            )
    return "\n".join(lines) + "\n"


def write_main(cfg, out, head):
    text, rows = metric_table(cfg, rows_of(cfg, "main"), title="# Tables 2/3: main comparison (ours)", head=head)
    text += (
        "\nTraining time on the hardware above (wall clock, validations included; a distilled student's "
        "excludes its teacher's training):\n\n" + training_time(cfg, rows_of(cfg, "main"))
    )
    spent = compute_spent(cfg)
    if spent:
        text += (
            f"\nEvery recorded run of this reproduction (all tables), wall clock from start to record, net of the "
            f"pauses a record notes: {spent} (runs recorded without a time, such as runs made before records "
            "existed, are not counted; nor is Table 5's measurement).\n"
        )
    (out / "main_table.md").write_text(text)
    with open(out / "main_table.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", *METRICS, *[k + "_se" for k in METRICS], "seeds"])
        for name, r in rows:
            w.writerow(
                [
                    name,
                    *[f"{r[k]:.5f}" for k in METRICS],
                    *["" if np.isnan(r[k + "_se"]) else f"{r[k + '_se']:.5f}" for k in METRICS],
                    r["seeds"],
                ]
            )
    return text


def write_ablation(cfg, out, head):
    text, _ = metric_table(
        cfg,
        rows_of(cfg, "table4"),
        f"# Table 4: ablation of SLMRec_{cfg.student_layers}<-{cfg.teacher_layers}'s terms (ours)",
        head,
        sweep_note(cfg),
        seed_list(cfg.sweep_seeds),
    )
    (out / "table4_ablation.md").write_text(text)
    return text


def paired(cfg, head):
    """Per-user NDCG@10 differences on the same test users and candidates, paired by seed."""
    lab = labels(cfg)
    pairs = [(spec.key, other) for spec in declare(cfg) for other in spec.vs]
    lines = [
        "# Paired per-user comparison of NDCG@10 (ours)",
        "",
        head,
        "",
        "Per-user NDCG@10 difference between two models on the same test users and candidates, for each "
        "seed both have; each user's differences averaged over those seeds, then the mean over users with "
        "its standard error. This captures which users are in the test set, not seed-to-seed training "
        "noise: with one seed, a difference can be within the seed noise even when beyond 2 standard errors "
        "here.",
        "",
        "| comparison | mean difference | standard error | seeds |",
        "|---|---|---|---|",
    ]
    for a, b in pairs:
        (_, ra, sa), (_, rb, sb) = collect(cfg, a), collect(cfg, b)
        common = sorted(set(sa) & set(sb))
        if not common:
            continue
        d = np.mean(
            [(ndcg_per_user(ra[sa.index(s)], 10) - ndcg_per_user(rb[sb.index(s)], 10)).numpy() for s in common], axis=0
        )
        lines.append(
            f"| {lab[a]} − {lab[b]} | {d.mean():+.4f} | {d.std(ddof=1) / np.sqrt(len(d)):.4f} | {len(common)} |"
        )
    return "\n".join(lines) + "\n"


def write_table1(cfg, out):
    stats = dataset_stats(cfg)
    save_json(stats, out / "table1.json")
    text = (
        "# Table 1: dataset statistics (ours)\n\n| dataset | users | items | interactions | density | avg. length |"
        f"\n|---|---|---|---|---|---|\n| {Path(cfg.data).name} | {stats['users']:,} | {stats['items']:,} | "
        f"{stats['interactions']:,} | {stats['density']:.4%} | {stats['avg_sequence_length']:.1f} |\n\n"
        f"{stats['users_with_fewer_negatives']['test']} of {stats['users']} users have fewer than "
        f"{stats['num_negatives']} items outside their history: they rank all of them.\n"
    )
    (out / "table1.md").write_text(text)
    return text


def write_table5(cfg, out, head, rows):
    """rows: slmrec.efficiency.measure dicts of the first seed's runs, the first one the reference (the full-depth
    model, or the deepest timed); whole-run times come from the runs' records."""
    save_json(rows, out / "table5_efficiency.json")
    ref = rows[0]
    keys = dict((label, key) for key, label in rows_of(cfg, "table5"))
    lines = [
        "# Table 5: efficiency (ours)",
        "",
        head,
        "",
        f"Measured one model after another in one process (`slmrec/efficiency.py`) on "
        f"{ref.get('hardware', 'the hardware above')}, {ref.get('precision', '')}. Epoch: one whole epoch of "
        f"the run's own training examples, one optimiser step per batch of {ref.get('batch_size', 16)} (a "
        "student's epoch is its distillation epoch; its teacher states are read from the cache, whose build "
        "was timed here too). Inference: the fast scoring path over all test users. Parameters: trainable "
        "(LoRA, W_in, W_out, L_ms adapters) and needed at inference (the LM slice with its token embeddings, "
        "the item table, the head). Whole run and time to the best validation: the recorded training runs "
        f"(first seed; validations included). Ratios are against {ref['model']}.",
        "",
        "| model | layers | epoch s | step s | training speed-up | inference users/s | inference speed-up | "
        "trainable params | trainable % | inference params | inference % | whole run min | to best min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        metrics = _first_seed_metrics(cfg, keys.get(r["model"]))
        extra = (metrics.get("teacher_states_seconds") or 0) / 60
        whole = (
            f"{metrics['train_seconds'] / 60:.1f}" + (f" + {extra:.1f} cache" if extra else "")
            if "train_seconds" in metrics
            else ""
        )
        best = f"{metrics['seconds_to_best'] / 60:.1f}" if metrics.get("seconds_to_best") else ""
        users = r["test_users"] / r["inference_s"]
        lines.append(
            f"| {r['model']} | {r['layers']} | {r['epoch_s']:.0f}"
            + (f" + {r['cache_build_s']:.0f} cache" if "cache_build_s" in r else "")
            + f" | {r['train_step_s']:.3f} | {ref['epoch_s'] / r['epoch_s']:.1f}x | {users:.0f} | "
            f"{ref['inference_s'] / r['inference_s']:.1f}x | {r['trainable_params'] / 1e6:.2f} M | "
            f"{r['trainable_params'] / ref['trainable_params']:.0%} | {r['inference_params'] / 1e6:.1f} M | "
            f"{r['inference_params'] / ref['inference_params']:.0%} | {whole} | {best} |"
        )
    e4, slm = PAPER_TABLE5["E4SRec (32 layers)"], PAPER_TABLE5["SLMRec_4<-8"]
    lines += [
        "",
        f"Paper (Table 5, LLaMA-7B on an A100, mean of four Amazon datasets), SLMRec_4<-8 against E4SRec "
        f"with all 32 layers: training {e4[0] / slm[0]:.1f}x faster per epoch, inference {e4[1] / slm[1]:.1f}x "
        f"faster, {slm[2] / e4[2]:.0%} of the trainable and {slm[3] / e4[3]:.0%} of the inference parameters.",
    ]
    for r in rows:
        if "cache_build_s" in r:
            lines.append(
                f"\n{r['model']}'s teacher-state cache: {r['cache_rows']:,} rows, {r['cache_mb']:.0f} MB, "
                f"built in {r['cache_build_s']:.0f} s (one teacher forward pass over the training examples)."
            )
    text = "\n".join(lines) + "\n"
    (out / "table5_efficiency.md").write_text(text)
    return text


def _first_seed_metrics(cfg, key) -> dict:
    d = record_dir(cfg.results, seed_list(1)[0], key) if key else None
    return net_times(load_json(d / "test_metrics.json"), d) if d and (d / "test_metrics.json").is_file() else {}


def net_times(metrics, rec) -> dict:
    """A run's training times without the time it was stopped (kill -STOP) while it ran, where its record says
    so (record.json: paused_seconds in all, paused_before_best_seconds before its best validation)."""
    r = load_json(rec / RECORD) if (rec / RECORD).is_file() else {}
    out = dict(metrics)
    for k, paused in (("train_seconds", "paused_seconds"), ("seconds_to_best", "paused_before_best_seconds")):
        if out.get(k) is not None and r.get(paused):
            out[k] -= r[paused]
    return out


def compute_spent(cfg) -> str:
    """The recorded runs' wall-clock time in all, per machine: what the reproduction cost."""
    spent = {}
    for rec in runs_root(cfg.results).glob("seed*/*/" + RECORD):
        r = load_json(rec)
        if r.get("seconds"):
            spent.setdefault(machine(rec.parent), []).append(r["seconds"] - r.get("paused_seconds", 0))
    return "; ".join(f"{len(v)} runs, {sum(v) / 3600:.2f} h on {m}" for m, v in sorted(spent.items()))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _title(cfg, prefix=""):
    """The setting in a figure's title: data, LM, where the runs ran, budget, seeds."""
    return (
        f"{prefix}{Path(cfg.data).name}, {cfg.base_model}, {'; '.join(recorded_machines(cfg))},\nbudget "
        f"'{cfg.budget}', {cfg.sweep_seeds} seed(s); error bars: standard error over seeds, or over test users "
        f"for one seed"
    )


def _save_figure(plt, fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pm_bar(row, digits=4):
    """NDCG@10 ± its error bar, saying which kind the bar is."""
    kind = "users" if np.isnan(row["NDCG@10_se"]) else "seeds"
    return f"{row['NDCG@10']:.{digits}f} ± {bar(row):.{digits}f} ({kind})"


def direct_inference(cfg, spec, seeds) -> dict:
    """{layer: summary-like row} of the recorded layer-by-layer evaluations of the full-depth model."""
    found = {}
    for seed in seeds:
        rec = record_dir(cfg.results, seed, spec.key)
        if (rec / spec.done_file).is_file():
            ranks = np.load(rec / "layers_ranks.npz") if (rec / "layers_ranks.npz").is_file() else {}
            for name, m in load_json(rec / spec.done_file).items():
                found.setdefault(int(name.split("_")[1]), []).append(
                    (m["NDCG@10"], ranks[name] if name in ranks else None)
                )
    out = {}
    for layer, runs in found.items():
        mean, se = mean_se([v for v, _ in runs])
        user = user_se(runs[0][1]) if runs[0][1] is not None else float("nan")
        out[layer] = {"NDCG@10": mean, "NDCG@10_se": se, "NDCG@10_user_se": user, "seeds": len(runs)}
    return out


def write_figure2(cfg, out, head):
    """NDCG@10 against depth, as the paper's Figure 2 panels: (a) E4SRec trained on its first l layers, (b)
    direct inference from layer l of the trained full-depth model; SASRec as a line with its band."""
    plt = _pyplot()
    L = cfg.full_depth
    sweep = seed_list(cfg.sweep_seeds)
    specs = [s for s in declare(cfg) if "fig2" in s.rows]
    trained = {int(s.flags["num_layers"]): summary(cfg, s.key, sweep) for s in specs if s.script == "finetune.py"}
    trained = {d: r for d, r in sorted(trained.items()) if r}
    direct = {}
    for spec in specs:
        if spec.script == "evaluate.py":
            direct = direct_inference(cfg, spec, sweep)
    sasrec = summary(cfg, "sasrec")
    lines = [
        "# Figure 2: depth (ours)",
        "",
        head,
        "",
        f"| layers l | E4SRec_l trained: NDCG@10 | seeds | direct inference from layer l of E4SRec_{L}: "
        "NDCG@10 | seeds |",
        "|---|---|---|---|---|",
    ]
    for d in cfg.depths:
        r, q = trained.get(d), direct.get(d)
        lines.append(
            f"| {d} | {_pm_bar(r) if r else ''} | {r['seeds'] if r else 0} | {_pm_bar(q) if q else ''} | "
            f"{q['seeds'] if q else 0} |"
        )
    lines.append(
        "\n± : the standard error over seeds, or, for one seed (marked users), over the test users of that "
        "run: the uncertainty from which users are tested, a lower bound on the run-to-run noise."
    )
    if sasrec:
        lines.append(f"\nSASRec: NDCG@10 {_pm_bar(sasrec)} ({sasrec['seeds']} seed(s)).")
    lines.append(sweep_note(cfg))
    (out / "figure2_depth.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    panels = [
        (axes[0], trained, "o", "(a) E4SRec_l: its first l layers, trained"),
        (axes[1], direct, "s", f"(b) direct inference from layer l of the trained E4SRec_{L}"),
    ]
    for ax, points, marker, label in panels:
        ls = sorted(points)
        if ls:
            ax.errorbar(
                ls,
                [points[l]["NDCG@10"] for l in ls],
                yerr=[bar(points[l]) for l in ls],
                marker=marker,
                capsize=3,
                label=label.split(" ", 1)[1],
            )
        if sasrec:
            ax.axhline(sasrec["NDCG@10"], color="gray", linestyle=":", label="SASRec")
            ax.axhspan(sasrec["NDCG@10"] - bar(sasrec), sasrec["NDCG@10"] + bar(sasrec), color="gray", alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xticks(cfg.depths, [str(d) for d in cfg.depths])
        ax.set_xlabel("decoder layers l")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("test NDCG@10")
    fig.suptitle(_title(cfg), fontsize=8)
    _save_figure(plt, fig, out / "figure2_depth.png")


def write_figure4(cfg, out, head):
    """NDCG@10 for block numbers B (offline KD) and online KD, with the teacher and E4SRec_N as references."""
    plt = _pyplot()
    M, N = cfg.teacher_layers, cfg.student_layers
    sweep = seed_list(cfg.sweep_seeds)
    bars = [(label, summary(cfg, key, sweep)) for key, label in rows_of(cfg, "fig4")]
    bars = [(label, r) for label, r in bars if r]
    lines = [
        "# Figure 4: block number B and online KD (ours)",
        "",
        head,
        "",
        "| SLMRec variant | seeds | " + " | ".join(METRICS) + " | NDCG@10 error bar |",
        "|---|---|" + "---|" * (len(METRICS) + 1),
    ]
    lines += [
        f"| {label} | {r['seeds']} | " + " | ".join(_pm(r, k) for k in METRICS) + f" | {_pm_bar(r)} |"
        for label, r in bars
    ]
    lines.append(sweep_note(cfg))
    (out / "figure4_blocks.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(bars))
    ax.bar(x, [r["NDCG@10"] for _, r in bars], yerr=[bar(r) for _, r in bars], capsize=4, color="tab:blue")
    ax.set_xticks(x, [label for label, _ in bars])
    for d, style in [(M, "--"), (N, ":")]:
        r = summary(cfg, f"e4srec_{d}", sweep)
        if r:
            ax.axhline(r["NDCG@10"], color="gray", linestyle=style, label=f"E4SRec_{d}")
    ax.set_ylabel("test NDCG@10")
    ax.legend(fontsize=8)
    ax.set_title(_title(cfg, f"SLMRec_{N}<-{M}: "), fontsize=8)
    _save_figure(plt, fig, out / "figure4_blocks.png")


def write_vs_paper(cfg, out, head):
    """Our rows beside the paper's (in %), same metrics; different data, LM and hardware."""
    cols = " | ".join(f"{m} Cloth | {m} Movie | {m} ours" for m in PAPER_METRICS)
    header = ["| model | " + cols + " | ours: seeds |", "|---|" + "---|" * (3 * len(PAPER_METRICS) + 1)]
    lines = [
        "# Ours beside the paper (%)",
        "",
        "Paper: Amazon 2018 Cloth and Movie, LLaMA-7B (32 layers), A100 (Tables 2 and 4). Ours: " + head,
        "",
        *header,
    ]

    def row(spec, paper):
        r = summary(cfg, spec.key)
        cells = []
        for i, m in enumerate(PAPER_METRICS):
            cells += [f"{paper[i]:.2f}", f"{paper[4 + i]:.2f}", _pm(r, m, 100, 2) if r else "not run"]
        lines.append(f"| {spec.paper} / ours: {spec.label} | " + " | ".join(cells) + f" | {r['seeds'] if r else 0} |")

    specs = [s for s in declare(cfg) if s.paper]
    for spec in specs:
        if spec.paper in PAPER_TABLE2:
            row(spec, PAPER_TABLE2[spec.paper])
    lines += ["", "Ablation (Table 4):", "", *header]
    for spec in specs:
        if spec.paper in PAPER_TABLE4:
            row(spec, PAPER_TABLE4[spec.paper])
    text = "\n".join(lines) + "\n"
    (out / "vs_paper.md").write_text(text)
    return text


def write_all(cfg: ReproConfig, command, efficiency_rows=None):
    out = Path(cfg.results)
    out.mkdir(parents=True, exist_ok=True)
    head = setting(cfg, command)
    save_json(cfg, out / "reproduce_config.json")
    parts = [write_table1(cfg, out), write_main(cfg, out, head), write_ablation(cfg, out, head)]
    (out / "paired.md").write_text(paired(cfg, head))
    if efficiency_rows:
        parts.append(write_table5(cfg, out, head, efficiency_rows))
    write_figure2(cfg, out, head)
    write_figure4(cfg, out, head)
    write_vs_paper(cfg, out, head)
    for p in parts:
        print(p)
    print((out / "paired.md").read_text(encoding="utf-8"))
