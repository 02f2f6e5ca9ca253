from pathlib import Path

import pytest

from helpers import TINY_TRAIN

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def project_cache(tmp_path_factory):
    """The project cache (converted GGUF models, the CPU speed measurements) in a temporary folder, so tests
    neither read nor fill the user's ~/.cache/slmrec."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SLMREC_CACHE", str(tmp_path_factory.mktemp("slmrec_cache")))
    yield
    mp.undo()


def write_amazon_csv(path, rows):
    """rows: (item, user, rating, timestamp) tuples."""
    path.write_text("".join(f"{i},{u},{r},{t}\n" for i, u, r, t in rows))
    return path


def synthetic_rows(num_users=30, num_items=25, per_user=12, seed=0):
    """Amazon-CSV rows where every user rates `per_user` distinct items highly, in time order."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for u in range(num_users):
        items = rng.choice(num_items, per_user, replace=False)
        for t, i in enumerate(items):
            rows.append((f"I{i}", f"U{u}", 5.0, 1000 + 10 * t + u))
    return rows


@pytest.fixture
def tiny_dataset(tmp_path):
    """A prepared dataset from synthetic Amazon CSV: 30 users, 25 items, 12 interactions each."""
    from slmrec.data import PreparedData
    from slmrec.prepare import PrepareConfig, prepare

    src = write_amazon_csv(tmp_path / "ratings.csv", synthetic_rows())
    prepare(PrepareConfig(str(src), num_negatives=15), tmp_path / "prepared")
    return PreparedData(tmp_path / "prepared")


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A local Hugging Face directory holding a random 8-layer tiny LLaMA and a byte-level tokenizer."""
    from slmrec.backbone import load_backbone

    lm, tok = load_backbone("random:tiny", 8)
    path = tmp_path_factory.mktemp("tiny_llama")
    lm.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def tiny_embedding(tiny_dataset, tmp_path):
    import torch

    from slmrec.embeddings import save_item_embedding

    g = torch.Generator().manual_seed(0)
    table = torch.randn(tiny_dataset.num_items + 1, 8, generator=g)
    table[0] = 0
    save_item_embedding(table, tmp_path / "emb.pkl")
    return tmp_path / "emb.pkl"


@pytest.fixture
def tiny_teacher(tiny_dataset, tiny_embedding, tiny_lm_dir, tmp_path):
    out = tmp_path / "teacher"
    import finetune

    finetune.main(
        str(tiny_dataset.path),
        str(tiny_embedding),
        str(out),
        base_model=str(tiny_lm_dir),
        **{**TINY_TRAIN, "num_layers": 8},
    )
    return out
