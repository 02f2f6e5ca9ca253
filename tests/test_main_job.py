"""run_main.sh on one's own ratings file (or a folder holding a published split): prepared into data/<name>,
SASRec, the teacher and the student trained into out/<name>, the results tables; a re-run trains nothing;
another file under the same name is refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import synthetic_rows, write_amazon_csv

ROOT = Path(__file__).resolve().parents[1]
TINY = "--max_steps 2 --eval_steps 2 --batch_size 8 --eval_batch_size 16 --precision fp32"


def run_main(*args, tmp_path):
    env = {
        **os.environ,
        "SLMREC_SKIP_SETUP": "1",
        "PYTHON": sys.executable,
        "SASREC_FLAGS": TINY,
        "TEACHER_FLAGS": f"--base_model random:tiny --num_layers 4 --max_len 6 --instruction History: "
        f"--response Next: {TINY}",
        "STUDENT_FLAGS": f"--num_layers 2 --blocks 2 {TINY}",
    }
    return subprocess.run(
        ["bash", str(ROOT / "run_main.sh"), *args, "--root", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_run_main_on_your_own_amazon_file(tmp_path):
    src = write_amazon_csv(tmp_path / "my_ratings.csv", synthetic_rows())
    first = run_main("--source", str(src), tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "out" / "my_ratings"
    assert (tmp_path / "data" / "my_ratings" / "stats.json").is_file()
    for run in ("sasrec", "teacher", "student"):
        assert (out / run / "test_metrics.json").is_file(), run
    table = [line for line in first.stdout.splitlines() if line.startswith("| ")]
    # the stored candidates' table, then full ranking's, under a line naming the data and its protocol
    assert [line.split(" | ")[0] for line in table] == ["| run", "| sasrec", "| student", "| teacher"] * 2
    assert "leave-one-out" in next(line for line in first.stdout.splitlines() if line.startswith("Data: "))
    assert (out / "student-export" / "config.json").is_file() and f"wrote {out}/student-export" in first.stdout

    again = run_main("--source", str(src), tmp_path=tmp_path)  # everything finished: nothing trains again
    assert again.returncode == 0 and "train_runtime" not in again.stdout + again.stderr
    assert [line for line in again.stdout.splitlines() if line.startswith("| ")] == table
    assert "the student, exported:" in again.stdout
    assert "TEACHER_FLAGS not used" in again.stderr and "SASREC_FLAGS not used" in again.stderr  # said, not silent

    (tmp_path / "elsewhere").mkdir()
    other = write_amazon_csv(tmp_path / "elsewhere" / "my_ratings.csv", synthetic_rows(seed=1))
    refused = run_main("--source", str(other), tmp_path=tmp_path)
    assert refused.returncode == 2 and "prepared from another file" in refused.stderr


def test_run_main_on_a_published_split_folder(tmp_path):
    """Amazon 2023's benchmark layout (a folder of train/valid/test files with histories): prepared as given, then
    every stage, and the table says which split produced it."""
    from test_amazon2023 import rating_only, write_split

    write_split(tmp_path / "last_out_w_his", rating_only(num_users=40, num_items=20, seed=4), "last_out", True)
    done = run_main("--source", str(tmp_path / "last_out_w_his"), "--name", "beauty", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads((tmp_path / "data" / "beauty" / "stats.json").read_text())
    assert (
        stats["split"] == "given" and stats["split_kind"] == "last_out" and stats["history_column"]["test"] == "checked"
    )
    data_line = next(line for line in done.stdout.splitlines() if line.startswith("Data: "))
    assert "a given last_out split (Beauty.train.csv, Beauty.valid.csv, Beauty.test.csv)" in data_line
    assert (tmp_path / "out" / "beauty" / "student-export" / "config.json").is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--source", "{tmp}/.ratings.csv"], "no folder name can be made from .ratings.csv"),
        (["--source", "{tmp}/r.csv", "--name", "../../x"], "'../../x' is not a plain folder name"),
        (["--source", "{tmp}/r.csv", "--root", "{tmp}/r.csv"], "is a file, not a folder"),
        (["--source"], "--source needs a value"),
        (["--source", "{tmp}/missing.csv"], "no such file"),
        (["--data", "{tmp}/d", "--source", "{tmp}/r.csv"], "give --source or --data, not both"),
    ],
    ids=["empty-name", "name-outside-root", "root-is-a-file", "no-value", "missing", "both"],
)
def test_run_main_refuses_paths_that_do_not_mean_what_was_said(tmp_path, args, message):
    (tmp_path / ".ratings.csv").write_text("x")
    (tmp_path / "r.csv").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    env = {**os.environ, "SLMREC_SKIP_SETUP": "1"}
    res = subprocess.run(
        ["bash", str(ROOT / "run_main.sh"), *[a.format(tmp=tmp_path) for a in args]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_a_relative_source_is_read_from_where_the_user_stands(tmp_path):
    (tmp_path / "r.csv").write_text("x")
    res = subprocess.run(
        ["bash", str(ROOT / "run_main.sh"), "--source", "r.csv", "--name", "bad/name"],
        cwd=tmp_path,
        env={**os.environ, "SLMREC_SKIP_SETUP": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # the file was found from tmp_path (not the checkout): the next check, the name, is what refuses
    assert res.returncode == 2 and "'bad/name' is not a plain folder name" in res.stderr, res.stderr
