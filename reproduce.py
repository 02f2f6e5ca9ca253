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
from pathlib import Path

from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.efficiency import measure
from slmrec.experiments import FIRST_SEED, make_config, plan, run_plan, seed_dir
from slmrec.tables import rows_of, write_all
from slmrec.utils import FlagError, load_json, parse_ints, save_json


def main(budget: str = "quick", preset: str = None, data: str = "data/ml-100k", source: str = "ml-100k",
         base_model: str = "smollm2-135m", teacher_layers: int = 8, student_layers: int = 4, blocks: int = None,
         depths=None, block_sweep=None, seeds: int = None, sweep_seeds: int = None, baseline_seeds: int = None,
         train: dict = None, baseline_train: dict = None, runs: str = "out/repro", results: str = "results",
         only=None, dry_run: bool = False, tables_only: bool = False):
    """budget: quick | full. preset: the paper's Table 6 hyper-parameters (paper-cloth, paper-movie,
    paper-music, paper-sport). blocks: SLMRec's B (default 4). depths (Fig. 2, default 1,2,4,8,16,30) and
    block_sweep (Fig. 4, default 1,2,4): comma lists. seeds / sweep_seeds / baseline_seeds override the
    budget's counts. train: flags for finetune.py and distill.py over the budget's, e.g.
    --train '{"max_steps": 300}'; baseline_train: flags for train_sr_trad.py, e.g. --baseline_train
    '{"patience": 10}'. only: run just these run names (a comma list of keys, as --dry_run lists them), e.g.
    --only sasrec,e4srec_8,e4srec_4,slmrec for the main comparison; the tables show whatever has finished.
    tables_only: write results/ from the runs finished so far."""
    overrides = dict(depths=depths and parse_ints(depths), block_sweep=block_sweep and parse_ints(block_sweep),
                     seeds=seeds, sweep_seeds=sweep_seeds, baseline_seeds=baseline_seeds,
                     baseline_train=baseline_train)
    cfg = make_config(budget, preset, train, blocks and {"blocks": blocks}, data=data, source=source,
                      base_model=base_model, teacher_layers=teacher_layers, student_layers=student_layers,
                      runs=runs, results=results, **{k: v for k, v in overrides.items() if v is not None})
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
    """Table 5 rows (E4SRec with all layers, the teacher, the student of the first seed; those finished), measured
    side by side; kept in <runs>/efficiency.json and remeasured only when a model is newer or the set changed."""
    planned = [(row, seed_dir(cfg.runs, FIRST_SEED) / row[0]) for row in rows_of(cfg, "table5")]
    finished = [(row, d) for row, d in planned if (d / "test_metrics.json").is_file()]
    if len(finished) < len(planned):
        print("Table 5 leaves out the runs not finished yet: "
              + ", ".join(str(d) for row, d in planned if (row, d) not in finished))
    rows, dirs = [row for row, _ in finished], [d for _, d in finished]
    if len(rows) < 2:
        return None
    cache = Path(cfg.runs) / "efficiency.json"
    newest = max((d / "test_metrics.json").stat().st_mtime for d in dirs)
    if cache.is_file() and (cache.stat().st_mtime > newest or not recompute):
        cached = load_json(cache)
        if [r["model"] for r in cached] == [label for _, label in rows]:
            return cached
    print("Table 5: timing " + ", ".join(label for _, label in rows), flush=True)
    data = PreparedData(cfg.data)
    batch = cfg.train.get("batch_size", 16)
    measured = [measure(label, d, data, batch_size=batch) for (_, label), d in zip(rows, dirs)]
    save_json(measured, cache)
    return measured


if __name__ == "__main__":
    run(main)
