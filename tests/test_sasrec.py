import json
import pickle

import pytest
import torch

import extract_emb
import train_sr_trad
from slmrec.embeddings import EmbeddingFileError, load_item_embedding
from slmrec.metrics import METRICS
from slmrec.seqrec import SASRec, SASRecConfig, load_sasrec
from slmrec.training import CheckpointError

TINY = dict(hidden_size=16, num_layers=1, num_heads=2, max_len=8, epochs=3, batch_size=8, eval_steps=4,
            logging_steps=4)


def test_sasrec_trains_saves_and_exports(tiny_dataset, tmp_path):
    out = tmp_path / "sasrec"
    train_sr_trad.main(str(tiny_dataset.path), str(out), **TINY)
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert set(METRICS) <= metrics.keys() and set(METRICS) == metrics["full"].keys()
    assert all(0 <= metrics[k] <= 1 for k in METRICS)
    assert json.loads((out / "run_config.json").read_text())["model"]["hidden_size"] == 16

    model = load_sasrec(out)
    extract_emb.main(str(out), str(tmp_path / "emb.pkl"))
    table = load_item_embedding(tmp_path / "emb.pkl", tiny_dataset.num_items)
    assert table.shape == (tiny_dataset.num_items + 1, 16)
    assert torch.equal(table, model.item_embedding.weight.detach())
    assert torch.all(table[0] == 0)

    # Deterministic on CPU for a seed.
    train_sr_trad.main(str(tiny_dataset.path), str(tmp_path / "again"), **TINY)
    assert json.loads((tmp_path / "again/test_metrics.json").read_text()) == metrics


def test_padding_does_not_change_sasrec_scores():
    model = SASRec(SASRecConfig(num_items=20, max_len=10, hidden_size=16, num_heads=2)).eval()
    short = torch.tensor([[0, 0, 0, 0, 0, 0, 3, 5, 7, 9]])
    longer = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    alone = model.score(short)
    batched = model.score(torch.cat([short, longer]))
    assert torch.allclose(alone, batched[:1], atol=1e-5)


def test_embedding_pickle_safety(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this ran while loading",))

    with open(tmp_path / "evil.pkl", "wb") as fh:
        pickle.dump({"item_embedding": Evil()}, fh)
    with pytest.raises(EmbeddingFileError, match="refusing to unpickle builtins.print"):
        load_item_embedding(tmp_path / "evil.pkl")
    with pytest.raises(EmbeddingFileError, match="no such item-embedding file"):
        load_item_embedding(tmp_path / "missing.pkl")
    with open(tmp_path / "wrong.pkl", "wb") as fh:
        pickle.dump({"item_embedding": torch.zeros(5, 4)}, fh)
    with pytest.raises(EmbeddingFileError, match="another dataset"):
        load_item_embedding(tmp_path / "wrong.pkl", num_items=10)


def test_missing_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_sasrec(tmp_path)
