"""The prepared dataset's files (format 2: memory-mapped .npy): the same fingerprints as the format-1 reader gave
for every input format, format 1 still opens and converts, and edits or damage are caught."""

import gzip
import json

import numpy as np
import pytest

import prepare_data
from conftest import synthetic_rows, write_amazon_csv
from slmrec import data as D, prepare as P
from slmrec.data import PreparedData
from slmrec.errors import DataError
from slmrec.prepare import PrepareConfig, convert, prepare

# Fingerprints of these inputs as prepared by the format-1 code (.npz files, int32 tables in memory), before
# the candidates were written as drawn: the protocol and the draws are unchanged, so they must be the same.
FORMAT1_FINGERPRINTS = {
    "amazon-csv": "a589078375aad5e1",
    "amazon-csv-999": "5a406689ece79b85",
    "amazon-csv-wide": "e90416f28e5bc44c",
    "amazon-json-gz": "55eb55dd8460d3ff",
    "ml-100k-format": "2484bda8cde54ac1",
}


def _inputs(tmp_path):
    """(name, PrepareConfig) of each case of FORMAT1_FINGERPRINTS."""
    src = write_amazon_csv(tmp_path / "a.csv", synthetic_rows())
    rows = synthetic_rows(num_users=200, num_items=300, per_user=20, seed=3)
    wide = write_amazon_csv(tmp_path / "c.csv", rows)
    lines = [json.dumps({"reviewerID": u, "asin": i, "overall": r, "unixReviewTime": t}) for i, u, r, t in rows]
    (tmp_path / "r.json.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    (tmp_path / "u.data").write_text("".join(f"{u[1:]}\t{i[1:]}\t{int(r)}\t{t}\n" for i, u, r, t in rows))
    return [
        ("amazon-csv", PrepareConfig(str(src), num_negatives=15)),
        ("amazon-csv-999", PrepareConfig(str(src))),
        ("amazon-csv-wide", PrepareConfig(str(wide), num_negatives=50)),
        ("amazon-json-gz", PrepareConfig(str(tmp_path / "r.json.gz"), num_negatives=50, k_core=3)),
        ("ml-100k-format", PrepareConfig(str(tmp_path / "u.data"), num_negatives=20)),
    ]


def test_every_format_keeps_its_fingerprint_and_the_files_are_memory_mapped(tmp_path):
    for name, cfg in _inputs(tmp_path):
        stats = prepare(cfg, tmp_path / name)
        assert stats["fingerprint"] == FORMAT1_FINGERPRINTS[name], name
        data = PreparedData(tmp_path / name)
        assert data.format == 2 and data.fingerprint == stats["fingerprint"]
        assert isinstance(data.candidates["test"], np.memmap) and isinstance(data.sequences.items.base, np.memmap)
        assert data.candidates["test"].dtype == np.uint16 and data.sequences.items.dtype == np.uint16
        assert not list((tmp_path / name).glob("*.npz"))


def write_format1(data: PreparedData):
    """Rewrite a prepared dataset as the format-1 code wrote it (.npz, int32 ids)."""
    s = data.sequences
    np.savez(data.path / "sequences.npz", items=np.asarray(s.items, np.int32), offsets=np.asarray(s.offsets))
    np.savez(
        data.path / "candidates.npz",
        valid=np.asarray(data.candidates["valid"], np.int32),
        test=np.asarray(data.candidates["test"], np.int32),
    )
    for f in ("sequences.npy", "offsets.npy", "candidates_valid.npy", "candidates_test.npy"):
        (data.path / f).unlink()
    stats = json.loads((data.path / "stats.json").read_text())
    for k in ("format", "sequence_digest"):
        stats.pop(k)
    (data.path / "stats.json").write_text(json.dumps(stats))


def test_format1_opens_and_converts_with_the_same_fingerprint(tiny_dataset, capsys):
    before = {split: np.array(c) for split, c in tiny_dataset.candidates.items()}
    write_format1(tiny_dataset)
    old = PreparedData(tiny_dataset.path)
    assert old.format == 1 and old.fingerprint == tiny_dataset.fingerprint
    assert all(np.array_equal(old.candidates[s], before[s]) for s in before)
    prepare_data.main(convert=str(tiny_dataset.path))
    new = PreparedData(tiny_dataset.path)
    assert new.format == 2 and new.fingerprint == old.fingerprint and not list(tiny_dataset.path.glob("*.npz"))
    assert all(np.array_equal(new.candidates[s], before[s]) for s in before)
    assert all(np.array_equal(new.sequences[u], old.sequences[u]) for u in range(new.num_users))
    convert(tiny_dataset.path)  # already converted: nothing to do
    prepare_data.main(verify=str(tiny_dataset.path))
    assert "every array matches" in capsys.readouterr().out


def _edit(path, offset_from_end, value):
    """Change one stored id (counted from the end of an .npy file) in place."""
    arr = np.load(path, mmap_mode="r+")
    flat = arr.reshape(-1)
    flat[len(flat) - offset_from_end] = value
    arr.flush()
    del arr


def test_an_edit_is_caught_at_open_or_by_verify(tiny_dataset, monkeypatch):
    path = tiny_dataset.path
    _edit(path / "candidates_test.npy", 1, 3)  # the last user's last negative
    with pytest.raises(DataError, match="do not match the fingerprint"):
        PreparedData(path)  # small tables: checked at every open
    # Above VERIFY_BYTES the candidates are checked on request only; the histories still at every open.
    monkeypatch.setattr(D, "VERIFY_BYTES", 0)
    data = PreparedData(path)
    with pytest.raises(DataError, match="do not match the fingerprint"):
        data.verify()
    _edit(path / "sequences.npy", 1, 2)
    with pytest.raises(DataError, match="histories do not match"):
        PreparedData(path)


@pytest.mark.parametrize("name", ["sequences.npy", "offsets.npy", "candidates_valid.npy", "candidates_test.npy"])
def test_a_table_cut_short_or_of_another_shape_is_a_one_line_error(tiny_dataset, name):
    path = tiny_dataset.path / name
    original = path.read_bytes()
    path.write_bytes(original[:-7])
    with pytest.raises(DataError, match=f"{name}: damaged or incomplete|do not fit together"):
        PreparedData(tiny_dataset.path)
    # whole, but of a shape that does not fit the other tables
    np.save(path, np.ones((3, 2) if "candidates" in name else 3, np.uint16 if name != "offsets.npy" else np.int64))
    with pytest.raises(DataError, match="do not fit together|do not match"):
        PreparedData(tiny_dataset.path)


def test_a_pickled_array_is_refused_not_loaded(tiny_dataset):
    np.save(tiny_dataset.path / "offsets.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="offsets.npy: damaged or incomplete"):
        PreparedData(tiny_dataset.path)


def test_memory_does_not_hold_the_candidates_while_they_are_drawn(tmp_path, monkeypatch):
    """Candidates go to disk a block of users at a time: with blocks of 4 users, no table of all users exists."""
    blocks = []
    write = P.NpyRows.write
    monkeypatch.setattr(P.NpyRows, "write", lambda self, block: blocks.append(len(block)) or write(self, block))
    draw = P.draw_candidates
    monkeypatch.setattr(P, "draw_candidates", lambda *a, **k: draw(*a, **{**k, "block": 4}))
    src = write_amazon_csv(tmp_path / "a.csv", synthetic_rows())
    stats = prepare(PrepareConfig(str(src), num_negatives=15), tmp_path / "p")
    assert stats["fingerprint"] == FORMAT1_FINGERPRINTS["amazon-csv"] and max(blocks) == 4
    assert sum(blocks) == 2 * stats["users"]


def test_candidate_rows_read_from_the_file_equal_the_mapped_table(tiny_dataset):
    users = [0, 1, 2, 7, 3, 29, 28, 5]  # runs of consecutive users and single ones, in any order
    for split in ("valid", "test"):
        rows = tiny_dataset.candidate_rows(split, users)
        assert rows.dtype == np.int64 and np.array_equal(rows, np.asarray(tiny_dataset.candidates[split])[users])
    assert tiny_dataset.candidate_rows("test", []).shape == (0, tiny_dataset.candidates["test"].shape[1])
