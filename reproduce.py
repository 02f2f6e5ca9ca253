"""Reproduce the paper's tables and figures and write results/ (Markdown tables, PNG figures, main_table.csv).

    python reproduce.py                          # quick budget: ml-100k + SmolLM2-135M, 3 seeds for the main comparison
    python reproduce.py --budget full            # every sweep with 3 seeds too (hours on a CPU)
    python reproduce.py --dry_run                # list the runs and their commands, run nothing
    python reproduce.py --source ratings_Clothing_Shoes_and_Jewelry.csv --data data/cloth \\
        --base_model /path/to/llama-7b --preset paper-cloth --runs out/cloth --results results/cloth   # GPU

Every run goes to <runs>/seed<S>/<name>/ with its log, config and command; finished runs are skipped, an
interrupted one resumes from its last checkpoint. The plan, budgets and presets: slmrec/experiments.py.
"""

import sys
from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.efficiency import measure
from slmrec.experiments import FIRST_SEED, ReproConfig, make_config, plan, run_plan, seed_dir
from slmrec.records import RECORD, record_dir, runs_root
from slmrec.tables import rows_of, write_all
from slmrec.precision import resolve_precision
from slmrec.training import ELLMREC_TRAIN
from slmrec.errors import FlagError
from slmrec.files import load_json, save_json
from slmrec.flags import split_flags
from slmrec.machine import hardware


def main(
    budget: str = "quick",
    preset: str = None,
    train: dict = None,
    blocks: int = None,
    only=None,
    dry_run: bool = False,
    tables_only: bool = False,
    **flags,
):
    """budget: quick | full. preset: the paper's Table 6 hyper-parameters (paper-cloth, paper-movie,
    paper-music, paper-sport). train: flags for finetune.py and distill.py over the budget's, e.g.
    --train '{"max_steps": 300}'. blocks: SLMRec's B (default 4). only: run just these run names (a comma list
    of keys, as --dry_run lists them), e.g. --only sasrec,e4srec_8,e4srec_4,slmrec for the main comparison; the
    tables show whatever has finished. tables_only: write results/ from the recorded runs (results/runs/)
    alone, no data or checkpoints needed. Other flags are ReproConfig's fields (slmrec/experiments.py): --data,
    --source, --base_model, --teacher_layers, --student_layers, --depths and --block_sweep (comma lists),
    --seeds, --sweep_seeds, --baseline_seeds (over the budget's counts), --baseline_train (flags for
    train_sr_trad.py, e.g. '{"patience": 10}'), --runs, --results."""
    overrides = split_flags(flags, ReproConfig, fixed=("budget", "preset", "train", "model", "distill"))[0]
    cfg = make_config(budget, preset, train, blocks and {"blocks": blocks}, **overrides)
    todo = plan(cfg)
    if only:
        keys = set(only.split(",") if isinstance(only, str) else only)
        unknown = keys - {r.key for r in todo}
        if unknown:
            raise FlagError(f"--only: no run named {', '.join(sorted(unknown))} in the plan (see --dry_run)")
        todo = [r for r in todo if r.key in keys]
    if dry_run:
        for r in todo:
            print(f"seed {r.seed} {r.key} ({r.spec.label}): python {' '.join(r.command(cfg.runs))}")
        return
    if not tables_only:
        run_plan(cfg, todo)
    # --tables_only rewrites the tables of the runs this command makes: name that command, without it.
    command = "python " + " ".join(a for a in sys.argv if a not in ("--tables_only", "--tables_only=True"))
    write_all(cfg, command, efficiency(cfg, recompute=not tables_only))


def efficiency(cfg, recompute=True):
    """Table 5 rows (the full-depth E4SRec, the teacher, E4SRec_N and the student of the first seed; those whose
    checkpoints are here), measured side by side in this process, kept in <results>/runs/efficiency.json beside
    the records, and measured again only when a run was recorded after it or the set of models changed.
    recompute=False (--tables_only): the kept measurement, whatever it is."""
    kept = runs_root(cfg.results) / "efficiency.json"
    planned = [(label, key) for key, label in rows_of(cfg, "table5")]
    if not recompute:
        return load_json(kept) if kept.is_file() else None
    here = [(label, seed_dir(cfg.runs, FIRST_SEED) / key) for label, key in planned]
    here = [(label, d) for label, d in here if (d / "test_metrics.json").is_file()]
    if len(here) < len(planned):
        print(
            "Table 5 leaves out the runs whose checkpoints are not here: "
            + ", ".join(label for label, _ in planned if label not in dict(here))
        )
    if len(here) < 2:
        return load_json(kept) if kept.is_file() else None
    records = [record_dir(cfg.results, FIRST_SEED, key) / RECORD for _, key in planned]
    newest = max(f.stat().st_mtime for f in records if f.is_file())
    if (
        kept.is_file()
        and kept.stat().st_mtime > newest
        and [r["model"] for r in load_json(kept)] == [label for label, _ in here]
    ):
        return load_json(kept)
    print("Table 5: timing " + ", ".join(label for label, _ in here) + " (an epoch of each)", flush=True)
    data = PreparedData(cfg.data)
    batch = {**ELLMREC_TRAIN, **cfg.train}["batch_size"]
    machine = {"hardware": hardware(), "precision": resolve_precision("auto"), "batch_size": batch}
    measured = [{**measure(label, d, data, batch_size=batch), **machine} for label, d in here]
    save_json(measured, kept)
    return measured


if __name__ == "__main__":
    run(main, configs=(ReproConfig,))
