"""reproduce.py's aggregation: means and standard errors over seeds, paired per-user differences."""

import csv
import json

import numpy as np
import pytest

import reproduce
from slmrec.metrics import METRICS, metrics_from_ranks


def test_results_tables_from_runs(tiny_dataset, tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    names = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "bert4rec": "BERT4Rec", "teacher": "E4SRec_8", "e4srec_n": "E4SRec_4", "slmrec": "SLMRec_4<-8",
             "slmrec_no_norm": "SLMRec_4<-8 (no norm)"}
    rng = np.random.default_rng(0)
    written = {}
    for seed in (42, 43, 44):
        for key in names:
            d = runs / f"seed{seed}" / key
            d.mkdir(parents=True)
            ranks = rng.integers(0, 30, tiny_dataset.num_users)
            m = metrics_from_ranks(ranks)
            (d / "test_metrics.json").write_text(json.dumps(m))
            np.savez(d / "test_ranks.npz", candidates=ranks, full=ranks)
            written.setdefault(key, []).append((m, ranks))
    reproduce.write_results(runs, results, names, 3, str(tiny_dataset.path), "random:tiny", "quick",
                            reproduce.BUDGETS["quick"], "python reproduce.py")
    rows = list(csv.DictReader(open(results / "main_table.csv")))
    assert [r["model"] for r in rows] == list(names.values())
    assert list(rows[0]) == ["model", *METRICS, *[f"{k}_se" for k in METRICS], "seeds"]
    vals = [m["NDCG@10"] for m, _ in written["slmrec"]]
    assert float(rows[5]["NDCG@10"]) == pytest.approx(np.mean(vals), abs=1e-5)
    assert float(rows[5]["NDCG@10_se"]) == pytest.approx(np.std(vals, ddof=1) / np.sqrt(3), abs=1e-5)

    def ndcg(r):
        return np.where(r < 10, 1 / np.log2(r + 2), 0)

    diff = np.mean([ndcg(written["slmrec"][i][1]) - ndcg(written["e4srec_n"][i][1]) for i in range(3)], axis=0)
    paired = (results / "paired.md").read_text()
    assert f"| SLMRec_4<-8 − E4SRec_4 | {diff.mean():+.4f} |" in paired
    assert "Budget: 'quick'" in (results / "main_table.md").read_text()
    assert f"| {tiny_dataset.num_users:,} |" in (results / "table1.md").read_text()
