"""Print the test metrics of every finished run under a directory as Markdown tables (the stored candidates, and
full ranking over all items), with what each run was (model, training budget, best step), the data and how it
was split, and the machine.

    python -m slmrec.report out/main
"""

import sys
from pathlib import Path

from .metrics import METRICS
from .files import load_json


def describe(run_config) -> tuple:
    """(model, objective, training, precision) of one run, from its run_config.json."""
    model, train = run_config["model"], run_config["train"]
    if "base_model" in model:
        name = f"{model['base_model']}, {model['num_layers']} layers, {model['readout']} readout"
        objective = run_config["examples"]["objective"]
    else:
        name, objective = model["model"], "every_position"
    if train.get("max_steps", -1) > 0:
        budget = f"{train['max_steps']} steps of {train['batch_size']}"
    else:
        budget = f"early stop, ≤{train['epochs']:g} epochs of {train['batch_size']}"
    return name, objective, budget, run_config.get("precision", "not recorded")


def describe_data(path) -> str:
    """A dataset and the protocol that split it, from its stats.json."""
    stats = Path(path) / "stats.json"
    if not stats.is_file():
        return f"{path} (no stats.json)"
    s = load_json(stats)
    size = f"{s['users']} users, {s['items']} items"
    if s.get("split") == "given":
        files = ", ".join(Path(f).name for f in s["split_files"].values())
        how = f"a given {s['split_kind']} split ({files}), {s['test_rows']} test rows"
    else:
        how = "leave-one-out (§5.1: ratings > 3, 5-core, last item to test)"
    return f"{path}: {size}; {how}; stored candidates 1 + {s['num_negatives']} per row"


def table(root) -> str:
    rows, full_rows, machines, data = [], [], set(), set()
    for f in sorted(Path(root).glob("*/test_metrics.json")):
        m, run_config = load_json(f), load_json(f.parent / "run_config.json")
        machines.add(run_config.get("hardware", "not recorded"))
        data.add(run_config.get("data", "not recorded"))
        if "full" in m:
            full_rows.append(f"| {f.parent.name} | " + " | ".join(f"{m['full'][k]:.4f}" for k in METRICS) + " |")
        to_best, peak = m.get("seconds_to_best"), m.get("peak_rss_mb")
        rows.append(
            f"| {f.parent.name} | "
            + " | ".join(describe(run_config))
            + f" | {m['best_step']} | "
            + (f"{to_best / 60:.1f}" if to_best is not None else "-")
            + " | "
            + (f"{peak / 1024:.1f}" if peak is not None else "-")
            + " | "
            + " | ".join(f"{m[k]:.4f}" for k in METRICS)
            + " |"
        )
    head = (
        "| run | model | objective | training | precision | best step | minutes to best | peak GB | "
        + " | ".join(METRICS)
        + " |\n|---|---|---|---|---|---|---|---|"
        + "---|" * len(METRICS)
    )
    full_head = "| run | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS)
    return "\n".join(
        [
            f"Data: {'; '.join(describe_data(d) for d in sorted(data))}",
            f"Test metrics (stored candidates) under {root}, trained on {'; '.join(sorted(machines))}:",
            head,
            *rows,
            *(
                [
                    "",
                    "Test metrics (full ranking over all items, the user's seen items left out):",
                    full_head,
                    *full_rows,
                ]
                if full_rows
                else []
            ),
        ]
    )


if __name__ == "__main__":
    print(table(sys.argv[1] if len(sys.argv) > 1 else "out/main"))
