"""The small results of every finished reproduction run, kept in the repository under <results>/runs/: its
command, configuration, test metrics, per-user test ranks, timings, and the machine and precision it ran on.
Kilobytes a run, no checkpoints. Every table and figure is written from these alone, so a reproduction can
be finished over several sittings or machines (a recorded run is not run again), and a reader can recompute
any table from a fresh clone (`python reproduce.py --tables_only`).
"""

import datetime
import shutil
from pathlib import Path

from .precision import resolve_precision
from .files import load_json, save_json
from .machine import hardware

# What a run directory holds that is worth keeping (what exists of it): the command and configuration, the test
# metrics and per-user ranks, direct inference by layer, and the first seed's SASRec item table (260 KB on
# ml-100k), which every LM-based model of the reproduction is trained on.
KEPT = (
    "command.json",
    "run_config.json",
    "test_metrics.json",
    "test_ranks.npz",
    "layers.json",
    "layers_ranks.npz",
    "item_embedding.pkl",
)
RECORD = "record.json"  # where and how the run ran: hardware, precision, wall-clock seconds, when it finished


def runs_root(results) -> Path:
    return Path(results) / "runs"


def record_dir(results, seed, key) -> Path:
    return runs_root(results) / f"seed{seed}" / key


def is_recorded(rec: Path, done_file) -> bool:
    return (rec / done_file).is_file() and (rec / RECORD).is_file()


def record(run_dir: Path, rec: Path, seconds=None):
    """Copy a finished run's small files into its record folder, with the machine it ran on."""
    rec.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, rec / name)
    run_config = load_json(run_dir / "run_config.json") if (run_dir / "run_config.json").is_file() else {}
    save_json(
        {
            "hardware": run_config.get("hardware", hardware()),
            "precision": run_config.get("precision", resolve_precision("auto")),
            "seconds": seconds,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
        rec / RECORD,
    )


def machine(rec: Path) -> str:
    """'<hardware>, <precision>' of a recorded run."""
    r = load_json(rec / RECORD)
    return f"{r['hardware']}, {r['precision']}"
