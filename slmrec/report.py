"""Print the test metrics of every finished run under a directory as one Markdown table.

    python -m slmrec.report out/main
"""

import sys
from pathlib import Path

from .metrics import METRICS
from .utils import load_json


def table(root) -> str:
    rows = []
    for f in sorted(Path(root).glob("*/test_metrics.json")):
        m = load_json(f)
        rows.append(f"| {f.parent.name} | " + " | ".join(f"{m[k]:.4f}" for k in METRICS) + " |")
    head = "| run | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS)
    return "\n".join([f"Test metrics (stored candidates) under {root}:", head, *rows])


if __name__ == "__main__":
    print(table(sys.argv[1] if len(sys.argv) > 1 else "out/main"))
