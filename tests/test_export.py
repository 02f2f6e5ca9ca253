"""export.py: a run as one self-contained folder, and that folder scoring alone as the run does."""

import json

import numpy as np
import pytest
import torch

import export as export_cli
import recommend
from helpers import random_ellmrec
from slmrec.checkpoints import CheckpointError, save_model
from slmrec.errors import DamagedFile, DataError, FlagError
from slmrec.export import FILES, export, load_export
from slmrec.inference import InferenceConfig
from slmrec.recommender import Recommender
from slmrec.seqrec import SeqRecConfig, build_seqrec

FP32 = InferenceConfig(precision="fp32")


@pytest.fixture
def run(tiny_dataset, tiny_lm_dir, tmp_path):
    """A saved E-LLMRec run (non-zero LoRA and heads, as after training) with its records."""
    model = random_ellmrec(tiny_dataset.num_items, tiny_lm_dir, tiny_dataset.fingerprint)
    out = tmp_path / "student"
    save_model(model, out)
    (out / "run_config.json").write_text(json.dumps({"data": str(tiny_dataset.path)}))
    (out / "test_metrics.json").write_text(json.dumps({"NDCG@10": 0.25, "MRR": 0.2, "full": {"MRR": 0.1}}))
    return out


def test_the_export_scores_as_the_run_for_every_test_user(tiny_dataset, run, tmp_path):
    folder = tmp_path / "shipped"
    export(run, folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)  # nothing else: a hub repository as it is
    histories = [tiny_dataset.history(u, "test").tolist() for u in range(tiny_dataset.num_users)]
    want = Recommender.from_checkpoint(run, tiny_dataset, FP32).recommend(histories, k=10)
    shipped = Recommender.from_pretrained(folder, cfg=FP32)  # no dataset: the folder's own items
    got = shipped.recommend(histories, k=10)
    assert [[i for i, _ in r] for r in got] == [[i for i, _ in r] for r in want]  # the same top-10
    assert np.allclose([s for r in got for _, s in r], [s for r in want for _, s in r], atol=1e-5, rtol=0)
    # the plain path of the exported model gives them too
    plain = Recommender.from_pretrained(folder, cfg=InferenceConfig(precision="fp32", fast=False))
    assert [[i for i, _ in r] for r in plain.recommend(histories, k=10)] == [[i for i, _ in r] for r in want]
    # only the prompt's tokens ship, not the LM's token table; the L_ms adapters stay behind
    config = json.loads((folder / "config.json").read_text())
    assert config["decoder"]["vocab_size"] <= len(config["model"]["instruction_ids"] + config["model"]["response_ids"])
    card = (folder / "README.md").read_text()
    assert "0.2500" in card and "from_pretrained" in card and tiny_dataset.fingerprint in card


def test_a_real_difference_in_the_weights_is_caught(tiny_dataset, run, tmp_path):
    """The equality above can fail: an export whose W_out is changed by 1% scores otherwise."""
    folder = tmp_path / "shipped"
    export(run, folder)
    model = load_export(folder)
    x = torch.from_numpy(np.array([tiny_dataset.history(u, "test")[-6:] for u in range(5)])).long()
    with torch.no_grad():
        before = model.score(x)
        model.w_out.weight.mul_(1.01)
        after = model.score(x)
    assert not torch.allclose(before, after, atol=1e-5, rtol=0)


def test_bf16_export_scores_within_bf16_rounding(tiny_dataset, run, tmp_path):
    export(run, tmp_path / "bf16", dtype="bf16")
    export(run, tmp_path / "fp32")
    assert (tmp_path / "bf16" / "model.safetensors").stat().st_size < (
        tmp_path / "fp32" / "model.safetensors"
    ).stat().st_size
    x = torch.from_numpy(np.array([tiny_dataset.history(u, "test")[-6:] for u in range(tiny_dataset.num_users)])).long()
    with torch.no_grad():
        a, b = load_export(tmp_path / "fp32").score(x), load_export(tmp_path / "bf16").score(x).float()
    # bf16 keeps 8 bits of mantissa: weights rounded once, the scores within a few units of that rounding
    assert torch.allclose(a[:, 1:], b[:, 1:], rtol=0.05, atol=0.05 * a[:, 1:].abs().max().item())


def test_recommend_and_the_cli_take_the_exported_folder_alone(tiny_dataset, run, tmp_path, capsys):
    folder = tmp_path / "shipped"
    export_cli.main(str(run), str(folder))
    assert "MB" in capsys.readouterr().out
    item_ids, _ = tiny_dataset.items()
    out = tmp_path / "recs.jsonl"
    recommend.main(model=str(folder), history=f"{item_ids[1]},{item_ids[2]}", k=3, output=str(out), precision="fp32")
    row = json.loads(out.read_text())
    ref = tmp_path / "ref.jsonl"
    recommend.main(
        str(run), str(tiny_dataset.path), history=f"{item_ids[1]},{item_ids[2]}", k=3, output=str(ref), precision="fp32"
    )
    assert [x["item"] for x in row["items"]] == [x["item"] for x in json.loads(ref.read_text())["items"]]
    # a user's history needs the dataset: without it one line says so; with it, it works
    with pytest.raises(DataError, match="needs the prepared dataset"):
        recommend.main(model=str(folder), user=tiny_dataset.users()[0])
    recommend.main(model=str(folder), data=str(tiny_dataset.path), user=tiny_dataset.users()[0], k=2)
    with pytest.raises(FlagError, match="give --checkpoint"):
        recommend.main(checkpoint=str(run), model=str(folder), history=item_ids[1])


def test_damaged_or_foreign_folders_are_one_line_errors(tiny_dataset, run, tmp_path):
    folder = tmp_path / "shipped"
    export(run, folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="changed since it was exported"):
        load_export(folder)
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(DamagedFile, match="config.json: damaged"):
        load_export(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(CheckpointError, match="not an exported model"):
        Recommender.from_pretrained(folder)
    (folder / "items.tsv").unlink()
    with pytest.raises(CheckpointError, match="missing items.tsv"):
        load_export(folder)


def test_export_refuses_what_it_cannot_make_and_writes_nothing(tiny_dataset, run, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    with pytest.raises(FlagError, match="not an empty folder"):
        export(run, taken)
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]
    with pytest.raises(FlagError, match="which the export reads"):
        export(run, run / "inside")
    with pytest.raises(FlagError, match="--dtype"):
        export(run, tmp_path / "x", dtype="fp8")
    sasrec = tmp_path / "sasrec"
    save_model(build_seqrec(SeqRecConfig(tiny_dataset.num_items, max_len=6)), sasrec)
    with pytest.raises(CheckpointError, match="holds a 'seqrec' model, expected 'ellmrec'"):
        export(sasrec, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_the_onnx_graph_scores_as_torch(tiny_dataset, run, tmp_path):
    import onnxruntime

    from slmrec.onnx_graph import write_onnx

    folder = tmp_path / "shipped"
    export(run, folder)
    session = onnxruntime.InferenceSession(str(write_onnx(folder)))
    scorer = Recommender.from_pretrained(folder, cfg=FP32).scorer
    full = [tiny_dataset.history(u, "test")[-6:] for u in range(tiny_dataset.num_users)]
    ragged = [h[-n:] for n, h in zip([1, 2, 3, 4, 5, 6] * 5, full)]  # every length, left-padded
    for batch, length in ((full, 6), (ragged, 6), (ragged[:1], 6), ([h[-3:] for h in full[:7]], 3)):
        x = np.zeros((len(batch), length), np.int64)
        for r, h in enumerate(batch):
            x[r, length - len(h) :] = h
        got = session.run(None, {"history": x})[0]
        want = scorer(torch.from_numpy(x)).numpy()
        assert got.shape == want.shape
        assert np.allclose(got[:, 1:], want[:, 1:], atol=1e-4, rtol=1e-4)
        order = lambda s: np.argsort(-s[:, 1:], axis=1, kind="stable")[:, :10]  # noqa: E731
        assert (order(got) == order(want)).all()  # the same top-10 for every history
