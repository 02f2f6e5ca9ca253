"""run_main.sh on one's own ratings file: prepared into data/<name>, SASRec, the teacher and the student trained
into out/<name>, one results table; a re-run trains nothing; another file under the same name is refused."""

import os
import subprocess
import sys
from pathlib import Path

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
    assert [line.split(" | ")[0] for line in table[1:]] == ["| sasrec", "| student", "| teacher"]
    assert (out / "student-export" / "config.json").is_file() and f"wrote {out}/student-export" in first.stdout

    again = run_main("--source", str(src), tmp_path=tmp_path)  # everything finished: nothing trains again
    assert again.returncode == 0 and "train_runtime" not in again.stdout + again.stderr
    assert [line for line in again.stdout.splitlines() if line.startswith("| ")] == table
    assert "the student, exported:" in again.stdout

    (tmp_path / "elsewhere").mkdir()
    other = write_amazon_csv(tmp_path / "elsewhere" / "my_ratings.csv", synthetic_rows(seed=1))
    refused = run_main("--source", str(other), tmp_path=tmp_path)
    assert refused.returncode == 2 and "prepared from another file" in refused.stderr
