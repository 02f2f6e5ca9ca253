"""Bad input and interruptions: each is refused with a clear message before any work, and loses nothing.

CATALOGUE is a list of (script, arguments, message the user must see): add a line to add a case. Arguments may
name {data} (a prepared tiny dataset), {tmp} (an empty folder) and {src} (its ratings file); every case must
exit 2 with one line of error, no traceback, and leave {tmp} as it was.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate as evaluate_cli
import prepare_data
import extract_emb
import finetune
import distill
import recommend
import reproduce
import train_sr_trad
from conftest import ROOT, synthetic_rows, write_amazon_csv
from slmrec import cli
from slmrec.data import PreparedData
from slmrec.errors import DataError
from slmrec.prepare import PrepareConfig, prepare
from slmrec.embeddings import EmbeddingFileError, load_item_embedding, save_item_embedding
from slmrec.metrics import evaluate
from slmrec.seqrec import SeqRecConfig
from slmrec.checkpoints import CheckpointError
from slmrec.training import SEQREC_TRAIN, NonFiniteError, TrainConfig, check_finite
from slmrec.errors import FlagError
from slmrec.files import run_lock, save_json, written_whole

SCRIPTS = {
    "process": prepare_data.main,
    "evaluate": evaluate_cli.main,
    "finetune": finetune.main,
    "recommend": recommend.main,
    "train_sr_trad": train_sr_trad.main,
    "extract_emb": extract_emb.main,
    "distill": distill.main,
    "reproduce": reproduce.main,
}

CATALOGUE = [
    ("process", "--source {src} --output_dir {tmp}/p --k_cor 3", "unknown flag(s): --k_cor"),
    ("extract_emb", "--checkpoint {tmp} --outptu {tmp}/e.pkl", "unknown flag --outptu"),
    ("process", "--source {src} --output_dir {tmp}/p --seed many", "--seed: expected int"),
    ("process", "--source {tmp}/missing.csv --output_dir {tmp}/p", "missing.csv"),
    ("process", "--source {src} --output_dir {data}", "already holds a prepared dataset; pass --overwrite"),
    ("process", "--source {src} --output_dir {tmp}", "exists and is not a prepared dataset"),
    ("evaluate", "--checkpoint {tmp} --data {data}", "not a trained model of this project"),
    ("evaluate", "--checkpoint {tmp} --data {tmp}/nowhere", "is not a prepared dataset"),
    ("evaluate", "--checkpoint {tmp} --data {data} --batch_sise 3", "unknown flag(s): --batch_sise"),
    ("evaluate", "--checkpoint {tmp} --data {data} --output {tmp}/notes.txt/m.json", "not a writable folder"),
    ("finetune", "--data {data} --item_embedding {tmp}/e.pkl --output_dir {tmp}/t --epochs x", "--epochs: expected"),
    ("finetune", "--data {data} --item_embedding {tmp}/e.pkl --output_dir {tmp}/t", "no such item-embedding file"),
    ("train_sr_trad", "--data {data} --output_dir {tmp}/s --resume maybe", "--resume must be true, false or force"),
    ("train_sr_trad", "--data {data} --output_dir {tmp}/s --num_items 3", "--num_items: set from the data"),
    ("recommend", "--checkpoint {tmp} --data {data} --history 1 --k 0", "k must be an integer"),
    ("train_sr_trad", "--data {data} --output_dir {tmp} --max_steps 1", "holds files this project did not write"),
    # every choice-valued flag, a wrong choice: one line naming the flag and the choices
    ("train_sr_trad", "--data {data} --output_dir {tmp}/s --model x", "--model must be one of"),
    (
        "finetune",
        "--data {data} --item_embedding {tmp}/e.pkl --output_dir {tmp}/t --objective everything",
        "--objective must be one of",
    ),
    (
        "finetune",
        "--data {data} --item_embedding {tmp}/e.pkl --output_dir {tmp}/t --sampling all",
        "--sampling must be one of",
    ),
    (
        "finetune",
        "--data {data} --item_embedding {tmp}/e.pkl --output_dir {tmp}/t --readout middle",
        "--readout must be one of",
    ),
    (
        "finetune",
        "--data {data} --item_embedding {tmp}/e.pkl --output_dir {tmp}/t --precision fp8",
        "precision must be auto, fp32, bf16 or fp16",
    ),
    ("distill", "--teacher {tmp} --data {data} --output_dir {tmp}/s --kd_mode sideways", "--kd_mode must be"),
    ("distill", "--teacher {tmp} --data {data} --output_dir {tmp}/s --norm_variant cubed", "--norm_variant must be"),
    (
        "distill",
        "--teacher {tmp} --data {data} --output_dir {tmp}/s --feature_positions some",
        "--feature_positions must be",
    ),
    (
        "distill",
        "--teacher {tmp} --data {data} --output_dir {tmp}/s --teacher_states sometimes",
        "--teacher_states must be",
    ),
    ("distill", "--teacher {tmp} --data {data} --output_dir {tmp}/s --lambda_cos -1", "the lambdas must be >= 0"),
    ("distill", "--teacher {tmp} --data {data} --output_dir {tmp}/s --state_cache {src}", "is a file, not a folder"),
    ("distill", "--teacher {tmp} --data {data} --output_dir {data}/../s --blocks 3", "not a checkpoint"),
    (
        "distill",
        "--teacher {tmp} --data {data} --output_dir {tmp}/s --teacher_states cache --kd_mode online",
        "--teacher_states cache needs offline KD",
    ),
    ("reproduce", "--budget x --dry_run", "--budget must be one of"),
    ("reproduce", "--preset paper-books --dry_run", "--preset must be one of"),
    ("reproduce", "--block_sweep 3 --dry_run", "--blocks 3 must divide"),
    ("reproduce", "--depths 1,2,16 --dry_run", "must include the teacher's and student's depths"),
    ("reproduce", "--only nothing --dry_run", "no run named nothing"),
    ("evaluate", "--checkpoint {tmp} --data {data} --precision fp8", "precision must be auto"),
    (
        "finetune",
        "--data {data} --item_embedding {emb} --output_dir {tmp}/t --base_model random:tiny --lora_targets "
        "gate_proj,mlp_in",
        "mlp_in matches no projection of the LM's layers; they are down_proj, gate_proj, k_proj",
    ),
    (
        "finetune",
        "--data {data} --item_embedding {emb} --output_dir {tmp}/t --base_model random:tiny --max_len 1000000",
        "--max_len 1000000",
    ),
    ("train_sr_trad", "--data {data} --output_dir {tmp}/s --max_len 10000000000", "--max_len 10000000000"),
    # an output that would overwrite what the command reads, or what the project made
    ("evaluate", "--checkpoint {tmp} --data {data} --output {data}/stats.json", "exists inside"),
    ("evaluate", "--checkpoint {tmp} --data {data} --output {tmp}/notes.txt", "exists inside"),
    ("recommend", "--checkpoint {tmp} --data {data} --history 1 --output {data}/items.tsv", "exists inside"),
    (
        "recommend",
        "--checkpoint {tmp} --data {data} --input {tmp}/notes.txt --output {tmp}/notes.txt",
        "is an input of this command",
    ),
    ("extract_emb", "--checkpoint {tmp} --output {tmp}/notes.txt", "exists inside"),
    # a training run's output folder that is, holds or lies in what the run reads (a teacher, a dataset, embeddings)
    ("distill", "--teacher {tmp} --data {data} --output_dir {tmp}", "which this run reads"),
    ("distill", "--teacher {tmp} --data {data} --output_dir {tmp}/student", "inside or above"),
    ("distill", "--teacher {tmp} --data {data} --output_dir {data}/student", "inside or above"),
    ("finetune", "--data {data} --item_embedding {emb} --output_dir {data}/t", "inside or above"),
    ("finetune", "--data {data} --item_embedding {emb} --output_dir {emb}/..", "inside or above"),
    ("train_sr_trad", "--data {data} --output_dir {data}", "which this run reads"),
    # the teacher's dataset by default: a teacher that is none names itself first
    ("distill", "--teacher {tmp} --output_dir {tmp}/s", "not a checkpoint of this project"),
]


@pytest.fixture
def places(tiny_dataset, tmp_path):
    (tmp_path / "src").mkdir()
    src = write_amazon_csv(tmp_path / "src" / "ratings.csv", synthetic_rows())
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("mine")
    save_item_embedding(
        torch.randn(tiny_dataset.num_items + 1, 8), tmp_path / "src" / "emb.pkl", tiny_dataset.fingerprint
    )
    return {
        "data": str(tiny_dataset.path),
        "tmp": str(empty),
        "src": str(src),
        "emb": str(tmp_path / "src" / "emb.pkl"),
    }


@pytest.mark.parametrize("script,args,message", CATALOGUE, ids=[f"{s}: {m}" for s, _, m in CATALOGUE])
def test_catalogue(script, args, message, places, capsys):
    before = sorted(p.name for p in Path(places["tmp"]).rglob("*"))
    with pytest.raises(SystemExit) as exit_:
        cli.run(SCRIPTS[script], args.format(**places).split())
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    error = [line for line in err.splitlines() if line.startswith("error: ")]  # log lines may come before it
    assert len(error) == 1 and message in error[0] and "Traceback" not in err
    assert sorted(p.name for p in Path(places["tmp"]).rglob("*")) == before


def test_expected_errors_print_no_traceback_from_the_shell(tmp_path):
    out = subprocess.run(
        [sys.executable, "evaluate.py", "--checkpoint", str(tmp_path), "--data", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr and "not a prepared dataset" in out.stderr


def test_booleans_accept_false():
    seen = {}

    def main(resume: bool = False, k: int = 1):
        seen.update(resume=resume, k=k)

    cli.run(main, ["--resume", "false", "--k", "3"])
    assert seen == {"resume": False, "k": 3}
    cli.run(main, ["--resume"])
    assert seen["resume"] is True


def test_nan_scores_rank_last(tiny_dataset):
    """A model whose scores are NaN (a NaN item table, a diverged run) gets the worst metrics, not perfect ones."""
    nan = lambda h: torch.full((h.shape[0], tiny_dataset.num_items + 1), float("nan"))
    m = evaluate(nan, tiny_dataset, "test", 6, 8)
    assert m["HR@10"] == 0 and m["full"]["HR@10"] == 0 and m["MRR"] < 0.1

    def positive_nan(h):  # only the held-out item is NaN: still last
        s = torch.zeros(h.shape[0], tiny_dataset.num_items + 1)
        targets = torch.as_tensor([tiny_dataset.target(u, "test") for u in range(len(h))])
        return s.scatter(1, targets[:, None], torch.nan)

    assert evaluate(positive_nan, tiny_dataset, "test", 6, tiny_dataset.num_users)["HR@10"] == 0


def test_non_finite_item_table_is_refused(tmp_path):
    table = torch.randn(6, 4)
    table[3, 1] = float("nan")
    save_item_embedding(table, tmp_path / "e.pkl")
    with pytest.raises(EmbeddingFileError, match=r"non-finite values .* items \[3\]"):
        load_item_embedding(tmp_path / "e.pkl", 5)


def test_non_finite_loss_stops_training_with_step_and_term(tiny_dataset, tmp_path):
    with pytest.raises(NonFiniteError, match="step 7: the cos loss is nan"):
        check_finite({"ce": torch.tensor(1.0), "cos": torch.tensor(float("nan"))}, 7)
    # A learning rate that blows the weights up: training stops at the first non-finite loss, no metrics written.
    with pytest.raises(NonFiniteError, match=r"step \d+: the item loss is (nan|inf)"):
        train_sr_trad.main(
            str(tiny_dataset.path),
            str(tmp_path / "s"),
            max_len=6,
            max_steps=20,
            eval_steps=10,
            learning_rate=1e30,
            batch_size=8,
            max_grad_norm=0.0,
        )
    assert not (tmp_path / "s" / "test_metrics.json").exists()


def test_process_never_deletes_what_it_did_not_write(tmp_path):
    src = write_amazon_csv(tmp_path / "ratings.csv", synthetic_rows())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(DataError, match="not a prepared dataset"):
        prepare(PrepareConfig(str(src), num_negatives=5), mine)
    assert (mine / "thesis.tex").read_text() == "years of work"
    with pytest.raises(DataError, match="holds the source"):
        prepare(PrepareConfig(str(src), num_negatives=5), tmp_path)
    assert src.is_file()


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_beside_it(tmp_path):
    """files.written_whole, behind every file the project writes whole (JSON, .npz, weights, pickles, JSONL)."""
    path = tmp_path / "metrics.json"
    save_json({"MRR": 0.1}, path)
    with pytest.raises(RuntimeError):
        with written_whole(path) as tmp:
            tmp.write_text('{"MRR": 0.')
            raise RuntimeError("killed while writing")
    assert json.loads(path.read_text()) == {"MRR": 0.1} and list(tmp_path.iterdir()) == [path]


def test_replacing_a_dataset_needs_overwrite_and_survives_a_kill(tmp_path):
    src = write_amazon_csv(tmp_path / "ratings.csv", synthetic_rows())
    out = tmp_path / "p"
    prepare(PrepareConfig(str(src), num_negatives=5), out)
    first = PreparedData(out).fingerprint
    with pytest.raises(DataError, match="pass --overwrite"):
        prepare(PrepareConfig(str(src), num_negatives=7), out)
    prepare(PrepareConfig(str(src), num_negatives=7), out, overwrite=True)
    assert PreparedData(out).fingerprint != first and not list(tmp_path.glob(".p.*"))
    # A kill between the swap's two renames: the old dataset is put back, stray temporary folders removed.
    kept = PreparedData(out).fingerprint
    out.rename(tmp_path / ".p.old-x1")
    (tmp_path / ".p.tmp-x2").mkdir()
    prepare(PrepareConfig(str(src), num_negatives=7), out, overwrite=True)
    assert PreparedData(out).fingerprint == kept and not list(tmp_path.glob(".p.*"))
    assert np.array_equal(PreparedData(out).candidates["test"].shape, (30, 8))
    # Another prepare into the same folder, running now (this process's id): its temporary folder is its own, kept.
    running = tmp_path / f".p.tmp-{os.getpid()}-abc"
    running.mkdir()
    (tmp_path / ".p.tmp-999999999-abc").mkdir()  # a run that is gone
    prepare(PrepareConfig(str(src), num_negatives=7), out, overwrite=True)
    assert [p.name for p in tmp_path.glob(".p.*")] == [running.name]


SASREC = dict(hidden_size=16, num_layers=1, num_heads=2, max_len=8, batch_size=8, eval_steps=4, logging_steps=4)


def test_resume_skips_incomplete_checkpoints_and_refuses_other_settings(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "s"
    train_sr_trad.main(str(tiny_dataset.path), str(out), max_steps=8, **SASREC)
    # A kill while checkpoint-12 was being written: no trainer_state.json yet.
    (out / "checkpoint-12").mkdir()
    (out / "checkpoint-12" / "model.safetensors").write_bytes(b"partial")
    before = (out / "run_config.json").read_text()
    with pytest.raises(CheckpointError, match=r"cannot resume checkpoint-8 with other settings \(train.learning_rate"):
        train_sr_trad.main(str(tiny_dataset.path), str(out), resume="true", max_steps=12, learning_rate=0.01, **SASREC)
    assert (out / "run_config.json").read_text() == before  # records nothing that did not happen
    assert "checkpoint-12: incomplete" in capsys.readouterr().err  # the script's log (setup_logging)
    other = tmp_path / "other"
    prepare(PrepareConfig(str(write_amazon_csv(tmp_path / "o.csv", synthetic_rows(seed=4))), num_negatives=15), other)
    with pytest.raises(CheckpointError, match="model.data_fingerprint"):
        train_sr_trad.main(str(other), str(out), resume="true", max_steps=12, **SASREC)
    # A longer budget is no change of settings; --resume force takes other settings and records them.
    train_sr_trad.main(str(tiny_dataset.path), str(out), resume="force", max_steps=12, learning_rate=0.01, **SASREC)
    config = json.loads((out / "run_config.json").read_text())
    assert config["train"]["learning_rate"] == 0.01 and config["train"]["max_steps"] == 12
    assert config["resumed_with_changes"] == ["train.learning_rate: 0.001 -> 0.01"]
    with pytest.raises(FlagError, match="--resume must be true, false or force"):
        train_sr_trad.main(str(tiny_dataset.path), str(out), resume="sometimes")


def test_embeddings_of_another_dataset_are_refused_by_fingerprint(tiny_dataset, tmp_path):
    table = torch.randn(tiny_dataset.num_items + 1, 4)
    save_item_embedding(table, tmp_path / "e.pkl", "0123456789abcdef")
    with pytest.raises(EmbeddingFileError, match="made from dataset 0123456789abcdef"):
        load_item_embedding(tmp_path / "e.pkl", tiny_dataset.num_items, tiny_dataset.fingerprint)
    # The original pipeline's format (no fingerprint) still loads, and what we write still reads as it.
    import pickle

    with open(tmp_path / "e.pkl", "rb") as fh:
        assert torch.equal(pickle.load(fh)["item_embedding"], table)


def _rows_text(rows):
    return "".join(f"{i},{u},{r},{t}\n" for i, u, r, t in rows)


def test_every_unusable_line_is_skipped_and_counted(tmp_path):
    rows = synthetic_rows()
    bad = ["I1,U1,5.0,1e999\n", "I1,U1,5.0,nan\n", ",U1,5.0,10\n", "I1,U1\n", "\x00\x01garbage\n", "I1,U1,x,10\n"]
    text = _rows_text(rows[:100]) + "".join(bad) + _rows_text(rows[100:])
    (tmp_path / "r.csv").write_text(text)
    stats = prepare(PrepareConfig(str(tmp_path / "r.csv"), num_negatives=5), tmp_path / "p")
    assert stats["malformed_lines"] == len(bad) and stats["malformed_examples"][0] == 101
    js = [json.dumps({"reviewerID": f"{u}", "asin": i, "overall": r, "unixReviewTime": t}) for i, u, r, t in rows]
    js[3] = json.dumps({"reviewerID": ["a", "list"], "asin": "I1", "overall": 5, "unixReviewTime": 1})
    js[4] = json.dumps({"reviewerID": "U1", "asin": "I1", "overall": {"x": 1}, "unixReviewTime": 1})
    js[5] = "[" * 100000
    (tmp_path / "r.json").write_text("\n".join(js) + "\n")
    stats = prepare(PrepareConfig(str(tmp_path / "r.json"), num_negatives=5), tmp_path / "pj")
    assert stats["malformed_lines"] == 3


def test_damaged_gzip_keeps_what_was_read(tmp_path, caplog):
    import gzip

    whole = gzip.compress(_rows_text(synthetic_rows(per_user=20)).encode())
    (tmp_path / "r.csv.gz").write_bytes(whole[: len(whole) * 3 // 4])
    stats = prepare(PrepareConfig(str(tmp_path / "r.csv.gz"), format="amazon-csv", num_negatives=5), tmp_path / "p")
    assert stats["damaged_input"].startswith("damaged after line") and stats["interactions"] > 0
    assert "r.csv.gz: damaged after line" in caplog.text


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "cp1252"])
def test_spreadsheet_encodings_are_read(tmp_path, encoding):
    rows = [(f"Ité{i}", u, r, t) for i, u, r, t in synthetic_rows()]
    (tmp_path / "r.csv").write_bytes(_rows_text(rows).encode(encoding))
    stats = prepare(PrepareConfig(str(tmp_path / "r.csv"), num_negatives=5), tmp_path / "p")
    assert stats["malformed_lines"] == 0
    names = PreparedData(tmp_path / "p").items()[0][1:]
    assert all(n.startswith("Ité") for n in names)


def test_one_run_per_output_folder(tiny_dataset, tmp_path, capsys):
    """A second run on a folder in use is refused with the first one's pid; a lock left by a killed run is taken
    over; the lock is gone when the run ends."""
    out = tmp_path / "s"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(json.dumps({"pid": live.pid, "host": socket.gethostname()}))
        with pytest.raises(SystemExit):
            flags = ["--data", str(tiny_dataset.path), "--output_dir", str(out), "--max_steps", "1"]
            cli.run(train_sr_trad.main, flags)
        assert f"in use by another run (pid {live.pid})" in capsys.readouterr().err
        assert not (out / "run_config.json").exists()
    finally:
        live.kill()
        live.wait()
    # the same lock now names a process that is gone: taken over, the run completes, the lock is released
    train_sr_trad.main(str(tiny_dataset.path), str(out), max_steps=1, eval_steps=1)
    assert (out / "test_metrics.json").is_file() and not (out / ".lock").exists()
    with run_lock(out):
        with run_lock(out):  # nested in one process: fine
            assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    assert not (out / ".lock").exists()


def test_damaged_files_are_one_line_errors(tiny_dataset, tmp_path, capsys):
    """A checkpoint or prepared dataset whose files are cut short or broken: one line naming the file and what to
    do, never a traceback."""
    run_dir = tmp_path / "s"
    train_sr_trad.main(str(tiny_dataset.path), str(run_dir), max_steps=1, eval_steps=1)
    capsys.readouterr()

    def refused(path, cut, message):
        original = path.read_bytes()
        path.write_bytes(original[:cut] if isinstance(cut, int) else cut)
        try:
            with pytest.raises(SystemExit):
                cli.run(evaluate_cli.main, ["--checkpoint", str(run_dir), "--data", str(tiny_dataset.path)])
            err = capsys.readouterr().err
            assert message in err and str(path.name) in err and "Traceback" not in err
        finally:
            path.write_bytes(original)

    refused(run_dir / "model.safetensors", 100, "damaged or incomplete weights")
    refused(run_dir / "slmrec_config.json", b"{not json", "damaged")
    for name in ("sequences.npy", "offsets.npy", "candidates_valid.npy", "candidates_test.npy", "stats.json"):
        refused(tiny_dataset.path / name, 50, "damaged or incomplete")
    cli.run(evaluate_cli.main, ["--checkpoint", str(run_dir), "--data", str(tiny_dataset.path)])  # restored: scores


def test_help_lists_every_flag_with_its_default_and_meaning(capsys):
    cli.run(train_sr_trad.main, ["--help"], configs=(SeqRecConfig, TrainConfig), defaults=SEQREC_TRAIN)
    out = capsys.readouterr().out
    assert "--data (default 'data/ml-100k')" in out and "--output_dir (default 'out/main/sasrec')" in out
    assert "--mask_prob (default 0.2): BERT4Rec: share of items masked in training" in out
    assert "--patience (default 20): stop after this many evaluations" in out  # the script's default over the field's
    for script in ("finetune.py", "distill.py", "train_sr_trad.py", "prepare_data.py", "evaluate.py", "recommend.py"):
        out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True).stdout
        assert "(default " in out and out.count("\n  --") >= 4, script


def test_run_finetune_prepares_only_what_the_flags_leave_unset(tiny_dataset, tiny_lm_dir, tmp_path):
    emb = tmp_path / "emb.pkl"
    save_item_embedding(torch.randn(tiny_dataset.num_items + 1, 8), emb, tiny_dataset.fingerprint)
    work = tmp_path / "work"  # a copy of the scripts, so out/ lands in the temporary folder
    work.mkdir()
    for name in ("run_finetune.sh", "finetune.py"):
        (work / name).write_text((ROOT / name).read_text())
    (work / "scripts").mkdir()
    for name in ("common.sh", "python.sh"):
        (work / "scripts" / name).write_text((ROOT / "scripts" / name).read_text())
    res = subprocess.run(
        [
            "bash",
            "run_finetune.sh",
            "out/t",
            "--data",
            str(tiny_dataset.path),
            "--item_embedding",
            str(emb),
            "--base_model",
            str(tiny_lm_dir),
            "--num_layers",
            "2",
            "--max_len",
            "6",
            "--max_steps",
            "1",
            "--eval_steps",
            "1",
            "--precision",
            "fp32",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (work / "out" / "t" / "test_metrics.json").is_file()
    assert sorted(p.name for p in (work / "out").iterdir()) == ["t"]  # no SASRec trained, no data prepared
