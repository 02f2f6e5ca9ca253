"""Hostile and unlucky inputs beyond the flag catalogue (tests/test_bad_inputs.py), one test per class:

- outputs that are not regular files: devices, named pipes, symlinks are written in place, never replaced;
- text inputs: one decoding policy (slmrec.formats.text_lines), a bad line is one line of error naming file and
  line; byte-order marks and CRLF endings are read;
- ids that hold tabs, quotes or newlines round-trip through the prepared dataset's own files;
- a student's dataset: the teacher's by default, a teacher whose dataset is gone or changed is refused.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

import distill
import recommend
from conftest import ROOT, synthetic_rows, write_amazon_csv
from slmrec import cli
from slmrec.checkpoints import CheckpointError
from slmrec.data import PreparedData
from slmrec.errors import DataError
from slmrec.prepare import PrepareConfig, prepare
from slmrec.formats import text_lines
from slmrec.files import check_writable, save_json
from helpers import TINY_TRAIN

STUDENT_TRAIN = {k: v for k, v in TINY_TRAIN.items() if k not in ("num_layers", "max_len", "instruction", "response")}


# ---------------------------------------------------------------- outputs that are not regular files


def test_a_named_pipe_gets_the_whole_file_and_stays_a_pipe(tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    check_writable(fifo, "--output")
    save_json({"MRR": 0.5}, fifo)
    reader.join(10)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and json.loads(got[0]) == {"MRR": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fifo"]


def test_a_device_is_written_in_place_not_replaced(tmp_path):
    """A private node of the null device (needs the right to make device nodes: root in a container)."""
    node = tmp_path / "null"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("cannot make a device node here")
    check_writable(node, "--output")
    save_json({"MRR": 0.5}, node)
    assert stat.S_ISCHR(os.stat(node).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]


def test_stdout_as_output_writes_to_the_stream():
    code = "from slmrec.files import save_json; save_json({'MRR': 0.5}, '/dev/stdout')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and json.loads(res.stdout) == {"MRR": 0.5}, res.stderr[-1000:]


def test_a_symlink_is_followed_and_kept(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    save_json({"MRR": 0.5}, link)
    assert link.is_symlink() and json.loads(target.read_text()) == {"MRR": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]


# ---------------------------------------------------------------- text inputs


def test_text_lines_reads_bom_and_crlf_and_names_an_undecodable_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n{"b": "\xc3\xa9"}\r\n')
    assert [(n, line.strip()) for n, line in text_lines(path)] == [(1, '{"a": 1}'), (2, '{"b": "é"}')]
    path.write_bytes(b'{"a": 1}\n{"b": "\xe9"}\n')
    with pytest.raises(DataError, match=r"in.jsonl line 2: not UTF-8 text \(byte 8"):
        list(text_lines(path))


@pytest.mark.parametrize(
    "content,message",
    [
        (b'{"history": ["I1"]}\n{"history": ["\xff"]}\n', "line 2: not UTF-8 text"),
        (b'{"history": ["I1"]}\n' + b"[" * 100000 + b"\n", "line 2: not JSON"),
        (b"\n\n", "no histories in the file"),
    ],
    ids=["undecodable", "deep", "empty"],
)
def test_recommend_input_lines_are_one_line_errors(tiny_dataset, tmp_path, capsys, content, message):
    src = tmp_path / "users.jsonl"
    src.write_bytes(content)
    with pytest.raises(SystemExit) as exit_:
        cli.run(recommend.main, ["--checkpoint", str(tmp_path), "--data", str(tiny_dataset.path), "--input", str(src)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err


def test_ids_on_the_command_line_stay_the_text_typed(tiny_dataset, tmp_path, monkeypatch):
    """fire reads a value as Python: 1.50 would be the float 1.5, 1e5 100000.0, 007 the int 7. Text flags keep
    what was typed, so an unknown id is named as given (and a known one like it is not mistaken for it)."""
    assert cli.keep_text(
        ["--history", "1.50,1e5", "--k=3", "--user=007", "--", "--x", "1"], {"history", "user", "x"}
    ) == [
        "--history",
        "'1.50,1e5'",
        "--k=3",
        "--user='007'",
        "--",
        "--x",
        "1",
    ]
    monkeypatch.setenv("SLMREC_DEBUG", "1")  # the error itself, not its one line
    base = ["--checkpoint", str(tmp_path), "--data", str(tiny_dataset.path)]
    with pytest.raises(DataError, match=r"item id\(s\) \['1.50', '1e5'\] not in"):
        cli.run(recommend.main, [*base, "--history", "1.50,1e5"])
    with pytest.raises(DataError, match="user '007' not in"):
        cli.run(recommend.main, [*base, "--user", "007"])


def test_recommend_input_with_bom_and_crlf_is_read(tiny_dataset, tmp_path):
    ids = tiny_dataset.catalog[0]
    src = tmp_path / "users.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps({"history": [ids[1], ids[2]]}).encode() + b"\r\n")
    assert [r.items for r in recommend.read_requests(tiny_dataset, input=str(src))] == [[1, 2]]


# ---------------------------------------------------------------- ids the dataset's files must round-trip


def test_ids_with_tabs_quotes_and_newlines_round_trip(tmp_path):
    rows = synthetic_rows(num_users=12, num_items=10, per_user=8)
    odd = {"I0": 'I"0', "I1": "I\t1", "I2": "I 2,"}  # a quote, a tab; a comma needs the JSON format
    lines = [
        json.dumps({"reviewerID": u if u != "U0" else "U\n0", "asin": odd.get(i, i), "overall": r, "unixReviewTime": t})
        for i, u, r, t in rows
    ]
    src = tmp_path / "reviews.jsonl"
    src.write_text("\n".join(lines) + "\n")
    prepare(PrepareConfig(str(src), num_negatives=3), tmp_path / "p")
    data = PreparedData(tmp_path / "p")
    assert set(odd.values()) <= set(data.catalog[0]) and "U\n0" in data.users()
    assert len(data.users()) == data.num_users and len(data.catalog[0]) == data.num_items + 1


# ---------------------------------------------------------------- raw files framed otherwise


def test_crlf_lying_compression_names_and_a_huge_line_give_the_same_dataset(tmp_path):
    """The same ratings with CRLF endings, gzipped under a plain name, plain under a .gz name, and with a 2 MB
    line inside (one malformed line, counted): one and the same fingerprint."""
    import gzip

    text = "".join(f"{i},{u},{r},{t}\n" for i, u, r, t in synthetic_rows())
    variants = {
        "plain.csv": text.encode(),
        "crlf.csv": text.replace("\n", "\r\n").encode(),
        "gzipped.csv": gzip.compress(text.encode()),
        "plain.csv.gz": text.encode(),
    }
    fingerprints = set()
    for name, content in variants.items():
        (tmp_path / name).write_bytes(content)
        cfg = PrepareConfig(str(tmp_path / name), format="amazon-csv", num_negatives=5)
        stats = prepare(cfg, tmp_path / f"p-{name}")
        assert stats["malformed_lines"] == 0, name
        fingerprints.add(stats["fingerprint"])
    lines = text.splitlines(keepends=True)
    huge = "I1,U1,5," + "9" * 2_000_000 + "\n"  # a timestamp of 2 M digits: no int64
    (tmp_path / "long.csv").write_text("".join(lines[:50]) + huge + "".join(lines[50:]))
    stats = prepare(PrepareConfig(str(tmp_path / "long.csv"), num_negatives=5), tmp_path / "p-long")
    assert stats["malformed_lines"] == 1 and stats["malformed_examples"] == [51]
    assert len(fingerprints | {stats["fingerprint"]}) == 1


# ---------------------------------------------------------------- the student's dataset


def test_the_student_trains_on_the_teachers_dataset_by_default(tiny_dataset, tiny_teacher, tmp_path):
    distill.main(str(tiny_teacher), output_dir=str(tmp_path / "s"), **STUDENT_TRAIN)
    assert json.loads((tmp_path / "s" / "run_config.json").read_text())["data"] == str(tiny_dataset.path)
    # the same dataset moved away: the teacher's record names a folder that is gone
    moved = tmp_path / "moved"
    shutil.move(tiny_dataset.path, moved)
    with pytest.raises(DataError, match=f"the teacher {tiny_teacher} was trained on {tiny_dataset.path}, which is not"):
        distill.main(str(tiny_teacher), output_dir=str(tmp_path / "s2"), **STUDENT_TRAIN)
    # another dataset in its place: refused by fingerprint, naming both
    other = write_amazon_csv(tmp_path / "other.csv", synthetic_rows(seed=9))
    prepare(PrepareConfig(str(other), num_negatives=15), tiny_dataset.path)
    with pytest.raises(CheckpointError, match=f"{tiny_teacher} was trained on dataset .* but {tiny_dataset.path} is"):
        distill.main(str(tiny_teacher), output_dir=str(tmp_path / "s3"), **STUDENT_TRAIN)
    # --data still overrides: the moved copy is the teacher's dataset
    distill.main(str(tiny_teacher), str(moved), str(tmp_path / "s4"), **STUDENT_TRAIN)
    assert (tmp_path / "s4" / "test_metrics.json").is_file()


def run_distill_sh(teacher, out):
    flags = [x for k, v in STUDENT_TRAIN.items() for x in (f"--{k}", str(v))]
    res = subprocess.run(
        ["bash", "run_distill.sh", str(teacher), str(out), *flags], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res, json.loads((out / "run_config.json").read_text())


def test_run_distill_sh_takes_the_teachers_dataset(tiny_dataset, tiny_teacher, tmp_path):
    """The original README's command, with a teacher trained on a dataset other than data/ml-100k."""
    _, config = run_distill_sh(tiny_teacher, tmp_path / "s")
    assert config["data"] == str(tiny_dataset.path)


def test_run_distill_sh_takes_a_checkpoint_of_the_teacher_as_the_original_users_pass_it(
    tiny_dataset, tiny_teacher, tmp_path
):
    """A teacher's checkpoint-N folder (its weights at step N) belongs to the run around it: the dataset is the
    one the run's run_config.json names."""
    checkpoint = sorted(tiny_teacher.glob("checkpoint-*"))[0]
    res, config = run_distill_sh(checkpoint, tmp_path / "s")
    assert f"is a checkpoint of the run {tiny_teacher}" in res.stderr
    assert config["data"] == str(tiny_dataset.path) and config["distill"]["teacher"] == str(checkpoint)


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_says_how_to_resume(capsys):
    def train(resume: str = "false"):
        raise KeyboardInterrupt

    def prepare():
        raise KeyboardInterrupt

    for fn, hint in (
        (train, "--resume true continues from the last complete checkpoint"),
        (prepare, "run the command again"),
    ):
        with pytest.raises(SystemExit) as exit_:
            cli.run(fn, [])
        err = capsys.readouterr().err
        assert exit_.value.code == 130 and hint in err and "Traceback" not in err


# ---------------------------------------------------------------- a damaged record


def test_a_damaged_record_is_a_one_line_error_naming_it(tmp_path, capsys):
    import reproduce

    results = tmp_path / "results"
    shutil.copytree(ROOT / "results", results)
    metrics = next(results.glob("runs/seed42/*/test_metrics.json"))
    metrics.write_text(metrics.read_text()[:40])
    with pytest.raises(SystemExit) as exit_:
        cli.run(reproduce.main, ["--tables_only", "--results", str(results)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"{metrics}: damaged, not JSON" in err and "Traceback" not in err


# ---------------------------------------------------------------- a full disk


def test_a_full_disk_is_one_line_and_loses_nothing(tmp_path):
    """Preparation with a file-size limit far below the candidates' size (as a full disk would stop it): one
    line, exit 2, the dataset it was replacing untouched, no temporary folder left."""
    src = write_amazon_csv(tmp_path / "r.csv", synthetic_rows(num_users=300, num_items=200, per_user=12))
    prepare(PrepareConfig(str(src), num_negatives=5), tmp_path / "p")
    before = {f.name: f.read_bytes() for f in (tmp_path / "p").iterdir()}
    code = (
        f"import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000)); sys.argv = ['prepare_data.py', "
        f"'--source', {str(src)!r}, '--output_dir', {str(tmp_path / 'p')!r}, '--overwrite', '--num_negatives', "
        f"'150']; import runpy; runpy.run_path('prepare_data.py', run_name='__main__')"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "File too large writing" in res.stderr and "nothing half-written is left" in res.stderr
    assert {f.name: f.read_bytes() for f in (tmp_path / "p").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "r.csv"]


# ---------------------------------------------------------------- two students of one teacher at once


def test_two_students_of_one_teacher_at_once_share_one_cache(tiny_dataset, tiny_teacher, tmp_path):
    """Two distillations of one teacher started together: both finish, with one cache and nothing left over
    (whether both reach the build at once is up to timing; the race itself is forced in the next test)."""
    flags = [x for k, v in {**STUDENT_TRAIN, "max_steps": 8}.items() for x in (f"--{k}", str(v))]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "distill.py",
                "--teacher",
                str(tiny_teacher),
                "--output_dir",
                str(tmp_path / f"s{i}"),
                *flags,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in results]
    caches = list((tiny_teacher / "state_cache").iterdir())
    assert len(caches) == 1 and not caches[0].name.startswith(".tmp")
    used = {json.loads((tmp_path / f"s{i}" / "test_metrics.json").read_text())["teacher_states"] for i in range(2)}
    assert used == {str(caches[0])}


def test_the_loser_of_a_cache_build_race_reads_the_winners(
    tiny_dataset,
    tiny_teacher,
    tmp_path,
    monkeypatch,
):
    """While this process builds a cache in its own temporary folder, another finishes the same cache first: the
    rename into place fails, the temporary folder goes, and the winner's cache is read."""
    from slmrec import teacher_cache
    from slmrec.distill import DistillConfig, states_key
    from slmrec.examples import ExampleConfig, training_examples
    from slmrec.inference import autocast
    from slmrec.losses import block_pairs
    from helpers import student_and_teacher

    dcfg = DistillConfig(str(tiny_teacher), blocks=2)
    teacher, _ = student_and_teacher(tiny_dataset, tiny_teacher, dcfg)
    examples = training_examples(tiny_dataset, 6, ExampleConfig())
    key = states_key(dcfg, teacher, tiny_dataset, examples, block_pairs(8, 4, 2), "fp32")
    winner = teacher_cache.load_or_build(tmp_path / "elsewhere", key, teacher, examples, autocast("cpu", None))
    root = tmp_path / "cache"
    build = teacher_cache.build

    def build_while_the_other_finishes(path, *args, **kwargs):
        shutil.copytree(winner.path, root / winner.path.name)  # the other process renames its cache into place
        return build(path, *args, **kwargs)

    monkeypatch.setattr(teacher_cache, "build", build_while_the_other_finishes)
    states = teacher_cache.load_or_build(root, key, teacher, examples, autocast("cpu", None))
    assert states.path == root / winner.path.name and [p.name for p in root.iterdir()] == [winner.path.name]
    assert np.array_equal(np.asarray(states.states), np.asarray(winner.states))


def test_serve_with_workers_refuses_a_bad_checkpoint_before_starting_any(tiny_dataset, tmp_path, monkeypatch):
    """Each uvicorn worker would fail to load it and be restarted, a traceback each, forever."""
    import serve

    started = []
    monkeypatch.setattr(serve.uvicorn, "run", lambda *a, **k: started.append(a))
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        serve.main(checkpoint=str(tmp_path / "missing"), data=str(tiny_dataset.path), workers=2)
    assert not started


# ---------------------------------------------------------------- files the project wrote, then changed (class 1)


@pytest.mark.parametrize("key,delta", [("items", 1), ("items", -1), ("users", 1), ("interactions", -1)])
def test_an_edited_count_in_stats_json_is_refused_at_open(tiny_dataset, key, delta):
    """One more item would make training index past the table, one fewer would recommend an item with no id."""
    stats_file = tiny_dataset.path / "stats.json"
    stats = json.loads(stats_file.read_text())
    stats[key] += delta
    stats_file.write_text(json.dumps(stats))
    with pytest.raises(DataError, match=f"says {key} = {stats[key]}, the arrays hold {stats[key] - delta}"):
        PreparedData(tiny_dataset.path)


@pytest.mark.parametrize("edit", ["drop-row", "duplicate-id", "id-out-of-range"])
def test_an_edited_items_tsv_is_refused_where_it_is_read(tiny_dataset, edit):
    path = tiny_dataset.path / "items.tsv"
    lines = path.read_text().splitlines(keepends=True)
    if edit == "drop-row":
        del lines[5]
    elif edit == "duplicate-id":
        lines[5] = lines[4]
    else:
        lines[5] = f"{tiny_dataset.num_items + 1}\tX\t\n"
    path.write_text("".join(lines))
    with pytest.raises(DataError, match="items.tsv"):
        PreparedData(tiny_dataset.path).items()


def test_a_candidate_id_past_the_catalogue_in_a_table_too_large_to_check_at_open(tiny_dataset, monkeypatch):
    """Above VERIFY_BYTES the candidates are checked by --verify only; an id flipped past the catalogue is caught
    as its row is read (it would index past the scores)."""
    from slmrec import data as data_module
    from slmrec.metrics import evaluate

    table = np.load(tiny_dataset.path / "candidates_test.npy")
    table[7, 3] = tiny_dataset.num_items + 5
    np.save(tiny_dataset.path / "candidates_test.npy", table)
    monkeypatch.setattr(data_module, "VERIFY_BYTES", 0)
    d = PreparedData(tiny_dataset.path)  # opens: the histories are checked, the tables are too large to be
    with pytest.raises(DataError, match=r"candidates_test.npy row 7: item 30 is past the catalogue's 25 items"):
        evaluate(lambda h: np.zeros(0), d, "test")
    with pytest.raises(DataError, match="do not match the fingerprint"):
        d.verify()


@pytest.fixture
def built_cache(tiny_dataset, tiny_teacher, tmp_path):
    from slmrec import teacher_cache
    from slmrec.distill import DistillConfig, states_key
    from slmrec.examples import ExampleConfig, training_examples
    from slmrec.inference import autocast
    from slmrec.losses import block_pairs
    from helpers import student_and_teacher

    dcfg = DistillConfig(str(tiny_teacher), blocks=2)
    teacher, _ = student_and_teacher(tiny_dataset, tiny_teacher, dcfg)
    examples = training_examples(tiny_dataset, 6, ExampleConfig())
    key = states_key(dcfg, teacher, tiny_dataset, examples, block_pairs(8, 4, 2), "fp32")

    def load():
        return teacher_cache.load_or_build(tmp_path / "cache", key, teacher, examples, autocast("cpu", None))

    return load, len(examples)


@pytest.mark.parametrize("change", ["zeros", "nan", "one-bit"])
def test_teacher_states_changed_on_disk_stop_training_naming_the_cache(built_cache, change):
    """A cache overwritten at its own size (zeros, a NaN, one flipped bit) is still complete by its sizes; its
    rows are checked against the checksums written with them as they are read."""
    load, n = built_cache
    states = load()
    before = states.rows(np.arange(n))["states"][0].clone()
    raw = np.memmap(states.path / "states.bin", np.uint8, "r+")
    if change == "zeros":
        raw[:] = 0
    elif change == "nan":
        raw[:4] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)
    else:
        raw[len(raw) // 2] ^= 1
    raw.flush()
    states = load()  # sizes, key and offsets as built: read, not rebuilt
    with pytest.raises(DataError, match=f"teacher state cache {states.path}: the states of example .* do not match"):
        states.rows(np.arange(n))
    shutil.rmtree(states.path)
    assert load().rows(np.arange(n))["states"][0].equal(before)  # deleted as told: built again, the same


def test_teacher_cache_offsets_changed_on_disk_are_rebuilt_not_read(built_cache, caplog):
    load, n = built_cache
    states = load()
    offsets = np.load(states.path / "offsets.npy")
    offsets[1:-1] = offsets[1:-1][::-1].copy()  # same size, same total: a damaged index
    np.save(states.path / "offsets.npy", offsets)
    again = load()
    assert "has offsets or checksums other than it was built with" in caplog.text
    assert np.array_equal(again.offsets, np.sort(offsets))
    again.rows(np.arange(n))


# ---------------------------------------------------------------- half-finished work, failures in one line


def test_a_failed_teacher_cache_build_leaves_no_temporary_folder(built_cache, monkeypatch, tmp_path):
    """A build stopped by a file-size limit (or a full disk, or Ctrl-C) takes its temporary folder with it."""
    import errno

    from slmrec import teacher_cache

    def stopped(path, *args, **kwargs):
        (path / "states.bin").write_bytes(b"partial")
        raise OSError(errno.EFBIG, "File too large", str(path / "states.bin"))

    monkeypatch.setattr(teacher_cache, "build", stopped)
    load, _ = built_cache
    with pytest.raises(OSError, match="File too large"):
        load()
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_failed_resume_force_leaves_the_runs_settings_as_they_were(tiny_dataset, tmp_path):
    """--resume force with a model of another size fails loading the checkpoint: run_config.json is the run's
    own again, so its own flags still resume it."""
    import train_sr_trad

    tiny = dict(num_layers=1, num_heads=2, max_len=8, batch_size=8, eval_steps=4, logging_steps=4)
    out = tmp_path / "s"
    train_sr_trad.main(str(tiny_dataset.path), str(out), max_steps=4, hidden_size=16, **tiny)
    before = (out / "run_config.json").read_bytes()
    with pytest.raises((CheckpointError, RuntimeError)):
        train_sr_trad.main(str(tiny_dataset.path), str(out), resume="force", max_steps=8, hidden_size=32, **tiny)
    assert (out / "run_config.json").read_bytes() == before
    train_sr_trad.main(str(tiny_dataset.path), str(out), resume="true", max_steps=8, hidden_size=16, **tiny)
    assert json.loads((out / "test_metrics.json").read_text())["best_step"] in (4, 8)


def test_resume_force_onto_another_dataset_is_one_line(tiny_dataset, tmp_path):
    import train_sr_trad

    tiny = dict(hidden_size=16, num_layers=1, num_heads=2, max_len=8, batch_size=8, eval_steps=4)
    out = tmp_path / "s"
    train_sr_trad.main(str(tiny_dataset.path), str(out), max_steps=4, **tiny)
    other = tmp_path / "other"
    prepare(PrepareConfig(str(write_amazon_csv(tmp_path / "o.csv", synthetic_rows(seed=4))), num_negatives=15), other)
    with pytest.raises(CheckpointError, match="checkpoint-4 was trained on another dataset .*new --output_dir"):
        train_sr_trad.main(str(other), str(out), resume="force", max_steps=8, **tiny)


def test_ids_holding_a_carriage_return_round_trip(tmp_path):
    """A JSON id may hold a carriage return; csv quotes one only when it is in the line terminator, so the row
    is quoted whole and read back as written."""
    rows = synthetic_rows(num_users=12, num_items=10, per_user=6)
    src = tmp_path / "r.json"
    src.write_text(
        "".join(
            json.dumps({"reviewerID": u + "\rx", "asin": i + "\r1", "overall": r, "unixReviewTime": t}) + "\n"
            for i, u, r, t in rows
        )
    )
    prepare(PrepareConfig(str(src), num_negatives=3), tmp_path / "p")
    d = PreparedData(tmp_path / "p")
    assert all(i.endswith("\r1") for i in d.items()[0][1:]) and all(u.endswith("\rx") for u in d.users())
    assert d.item_index["I3\r1"] >= 1 and "U0\rx" in d.user_index


def test_an_unquoted_carriage_return_from_an_older_dataset_is_one_line(tiny_dataset):
    path = tiny_dataset.path / "items.tsv"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace("\t", "\tA\rB", 1)
    path.write_text("".join(lines), newline="")
    with pytest.raises(DataError, match="items.tsv: cannot be read as a tab-separated table"):
        PreparedData(tiny_dataset.path).items()


def test_a_read_only_file_system_is_one_line(capsys):
    import errno

    def main():
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/ro/data/.p.tmp-1")

    with pytest.raises(SystemExit) as exit_:
        cli.run(main, [])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert (
        err.splitlines()[0]
        == "error: Read-only file system: cannot write /mnt/ro/data/.p.tmp-1; choose a writable folder"
    )


# ---------------------------------------------------------------- results that look fine and mean nothing (class 7)


def test_users_who_saw_every_item_cannot_make_a_result(tmp_path, caplog):
    """Every user saw every other item: no negative candidate anywhere, HR@1 = 1.00 for any model: refused.
    Some users so: counted, and said at preparation and at every evaluation."""
    from slmrec.metrics import evaluate

    everything = [(f"I{i}", f"U{u}", 5.0, 1000 + 10 * i + u) for u in range(8) for i in range(6)]
    with pytest.raises(DataError, match="no row has a negative candidate"):
        prepare(PrepareConfig(str(write_amazon_csv(tmp_path / "all.csv", everything)), num_negatives=3), tmp_path / "a")
    assert not (tmp_path / "a").exists()
    some = [(f"I{i}", f"U{u}", 5.0, 1000 + 10 * i + u) for u in range(16) for i in range(12 if u < 8 else 6)]
    stats = prepare(PrepareConfig(str(write_amazon_csv(tmp_path / "some.csv", some)), num_negatives=3), tmp_path / "s")
    assert stats["rows_without_negatives"] == {"valid": 8, "test": 8}
    assert "8 of 16 valid rows have no negative candidate" in caplog.text
    caplog.clear()
    import torch

    evaluate(lambda h: torch.zeros(len(h), 13), PreparedData(tmp_path / "s"), "test")
    assert "8 of 16 test rows have no negative candidate" in caplog.text
