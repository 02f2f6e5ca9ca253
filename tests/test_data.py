import errno
import functools
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_rows, write_amazon_csv
from slmrec import formats, prepare as P
from slmrec.data import PreparedData
from slmrec.errors import DataError
from slmrec.prepare import PrepareConfig, prepare
from slmrec.splits import k_core
from slmrec.raw import read_interactions
from slmrec.examples import WindowDataset


def brute_force_core(pairs, k):
    pairs = set(pairs)
    while True:
        uc, ic = {}, {}
        for u, i in pairs:
            uc[u] = uc.get(u, 0) + 1
            ic[i] = ic.get(i, 0) + 1
        kept = {(u, i) for u, i in pairs if uc[u] >= k and ic[i] >= k}
        if kept == pairs:
            return kept
        pairs = kept


def test_k_core_reaches_fixed_point():
    rng = np.random.default_rng(3)
    user = rng.integers(0, 60, 900)
    item = rng.zipf(1.6, 900) % 80
    pairs = sorted(set(zip(user.tolist(), item.tolist())))
    u = np.array([p[0] for p in pairs])
    i = np.array([p[1] for p in pairs])
    keep = k_core(u, i, 5)
    got = set(zip(u[keep].tolist(), i[keep].tolist()))
    assert got == brute_force_core(pairs, 5)
    # One pass would not have been enough on this data.
    one_pass = (np.bincount(u)[u] >= 5) & (np.bincount(i)[i] >= 5)
    assert one_pass.sum() > keep.sum() > 0


def test_rating_filter_dedupe_and_stable_time_order(tmp_path):
    rows = []
    for u in range(6):
        for i in range(6):
            rows.append((f"I{i}", f"U{u}", 5, 100))  # all at the same time: file order decides
    rows.append(("I0", "U0", 5, 50))  # a repeat of (U0, I0), earlier in time: it wins
    rows.append(("I9", "U0", 3, 10))  # rating 3 is not > 3: dropped
    rows += [(f"I{i}", "U6", 5, 200) for i in range(5)]  # a user with an unseen item: something to rank against
    src = write_amazon_csv(tmp_path / "r.csv", rows)
    stats = prepare(PrepareConfig(str(src), num_negatives=3), tmp_path / "p")
    d = PreparedData(tmp_path / "p")
    assert stats["ratings_not_above_threshold"] == 1 and stats["duplicate_pairs_removed"] == 1
    assert (stats["users"], stats["items"], stats["interactions"]) == (7, 6, 41)
    names = {int(r.split("\t")[0]): r.split("\t")[1] for r in (tmp_path / "p/items.tsv").read_text().splitlines()[1:]}
    assert [names[i] for i in d.sequences[0]] == ["I0", "I1", "I2", "I3", "I4", "I5"]
    assert [names[i] for i in d.sequences[1]] == ["I0", "I1", "I2", "I3", "I4", "I5"]
    assert sorted(names) == list(range(1, 7))  # ids 1..|I|, 0 is padding


def test_leave_one_out_and_candidates(tiny_dataset):
    d = tiny_dataset
    for u in range(d.num_users):
        s = d.sequences[u]
        assert list(d.train_part(u)) == list(s[:-2])
        assert list(d.history(u, "valid")) == list(s[:-2]) and d.target(u, "valid") == s[-2]
        assert list(d.history(u, "test")) == list(s[:-1]) and d.target(u, "test") == s[-1]
        for split in ("valid", "test"):
            c = d.candidates[split][u]
            assert c[0] == d.target(u, split)
            neg = c[1:][c[1:] > 0]
            assert len(neg) == len(set(neg.tolist())) == 13  # 25 items - 12 in the history
            assert not set(neg.tolist()) & set(s.tolist())
    assert d.stats["users_with_fewer_negatives"] == {"valid": 30, "test": 30}


def test_candidates_identical_across_runs_and_full_sized_when_possible(tmp_path):
    src = write_amazon_csv(tmp_path / "r.csv", synthetic_rows(num_users=40, num_items=200, per_user=10))
    for name in ("a", "b"):
        prepare(PrepareConfig(str(src), k_core=1, num_negatives=50), tmp_path / name)
    a, b = PreparedData(tmp_path / "a"), PreparedData(tmp_path / "b")
    assert a.fingerprint == b.fingerprint
    for split in ("valid", "test"):
        assert np.array_equal(a.candidates[split], b.candidates[split])
        assert (a.candidates[split] > 0).all()  # enough items: always 50 negatives
    assert a.stats["users_with_fewer_negatives"] == {"valid": 0, "test": 0}
    for u in range(a.num_users):
        assert not set(a.candidates["test"][u, 1:].tolist()) & set(a.sequences[u].tolist())
    prepare(PrepareConfig(str(src), k_core=1, num_negatives=50, seed=7), tmp_path / "c")
    assert not np.array_equal(PreparedData(tmp_path / "c").candidates["test"], a.candidates["test"])


def test_no_validation_or_test_item_reaches_training(tiny_dataset):
    d = tiny_dataset
    ds = WindowDataset(d, max_len=4)  # short windows: long histories are cut into several
    labels = np.concatenate([ds[i]["labels"].numpy() for i in range(len(ds))])
    inputs = np.concatenate([ds[i]["input_ids"].numpy() for i in range(len(ds))])
    expected = np.concatenate([d.train_part(u)[1:] for u in range(d.num_users)])
    assert sorted(labels[labels > 0].tolist()) == sorted(expected.tolist())  # each target once
    train_items = np.concatenate([d.train_part(u) for u in range(d.num_users)])
    assert np.isin(inputs[inputs > 0], train_items).all()


def test_same_data_in_every_format(tmp_path):
    rows = synthetic_rows(num_users=12, num_items=10, per_user=6)
    csv_path = write_amazon_csv(tmp_path / "a.csv", rows)
    with gzip.open(tmp_path / "a.json.gz", "wt") as fh:
        for i, u, r, t in rows:
            fh.write(json.dumps({"reviewerID": u, "asin": i, "overall": r, "unixReviewTime": t, "text": "x"}) + "\n")
    (tmp_path / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for i, u, r, t in rows))
    (tmp_path / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for i, u, r, t in rows))
    (tmp_path / "x.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t{r}\t{t}\n" for i, u, r, t in rows)
    )
    meta = tmp_path / "meta.json"
    meta.write_text("".join(json.dumps({"asin": f"I{i}", "title": f"Item {i}"}) + "\n" for i in range(10)) + "{bad\n")
    fps = set()
    for src in (csv_path, tmp_path / "a.json.gz", tmp_path / "u.data", tmp_path / "ratings.dat", tmp_path / "x.inter"):
        out = tmp_path / ("p_" + src.name)
        stats = prepare(PrepareConfig(str(src), metadata=str(meta), num_negatives=5), out)
        fps.add(stats["fingerprint"])
        assert stats["items_with_title"] == stats["items"]
    assert len(fps) == 1


def test_malformed_lines_are_counted_with_line_numbers(tmp_path, caplog):
    rows = synthetic_rows(num_users=10, num_items=6, per_user=6) + [(f"I{i}", "U10", 5, 999) for i in range(5)]
    lines = [f"{i},{u},{r},{t}\n" for i, u, r, t in rows]
    lines.insert(2, "garbage\n")
    lines.insert(5, "I1,U1,five,100\n")
    lines.insert(7, "I1,,5,100\n")
    (tmp_path / "r.csv").write_text("".join(lines))
    raw = read_interactions(tmp_path / "r.csv")
    assert raw.malformed == 3 and raw.malformed_examples == [3, 6, 8]
    stats = prepare(PrepareConfig(str(tmp_path / "r.csv"), num_negatives=3), tmp_path / "p")
    assert stats["malformed_lines"] == 3 and stats["interactions"] == 65
    assert "skipped 3 malformed lines" in caplog.text


@pytest.mark.parametrize(
    "content,fmt,message",
    ids=["wrong-width", "missing-column", "empty", "json-keys"],
    argvalues=[
        ("a\tb\n" * 150, "ml-100k", "the first 100 lines do not parse"),
        ("user_id:token\titem_id:token\trating:float\n1\t2\t5\n", "recbole", "no timestamp column"),
        ("", "amazon-csv", "the file is empty"),
        ('{"asin": "x"}\n' * 3, "amazon-json", "no line parses"),
    ],
)
def test_wrong_columns_fail_naming_the_file(tmp_path, content, fmt, message):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as e:
        read_interactions(path, fmt)
    assert str(path) in str(e.value)


def test_missing_file_and_nothing_left(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        prepare(PrepareConfig(str(tmp_path / "nope.csv")), tmp_path / "p")
    src = write_amazon_csv(tmp_path / "r.csv", [("I1", "U1", 5, 1), ("I2", "U1", 5, 2)])
    with pytest.raises(DataError, match="no user is left"):
        prepare(PrepareConfig(str(src)), tmp_path / "p")
    with pytest.raises(DataError, match="not a prepared dataset"):
        PreparedData(tmp_path)


def test_interrupted_run_leaves_no_dataset(tmp_path, monkeypatch):
    src = write_amazon_csv(tmp_path / "r.csv", synthetic_rows())
    written = []
    write = P.NpyRows.write

    def failing_write(self, block):  # killed while the test candidates are written, the valid ones complete
        if self.fh.name.endswith("candidates_test.npy"):
            written.extend(p.name for p in Path(self.fh.name).parent.iterdir())
            raise KeyboardInterrupt
        write(self, block)

    monkeypatch.setattr(P.NpyRows, "write", failing_write)
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareConfig(str(src)), tmp_path / "out")
    assert {"sequences.npy", "candidates_valid.npy"} <= set(written)  # interrupted after those were written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]


def test_a_write_that_fails_in_the_writer_thread_stops_the_run_and_leaves_no_dataset(tmp_path, monkeypatch):
    """The candidates are written by a thread (NpyRows): its error (here a full disk) reaches the caller."""
    src = write_amazon_csv(tmp_path / "r.csv", synthetic_rows())
    write = P.NpyRows._write

    def full_disk(self, block):
        if self.fh.name.endswith("candidates_test.npy"):
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, block)

    monkeypatch.setattr(P.NpyRows, "_write", full_disk)
    monkeypatch.setattr(P, "draw_candidates", functools.partial(P.draw_candidates, block=4))
    with pytest.raises(OSError, match="No space left"):
        prepare(PrepareConfig(str(src)), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]


def test_edited_dataset_is_refused(tiny_dataset):
    stats = json.loads((tiny_dataset.path / "stats.json").read_text())
    stats["fingerprint"] = "0" * 16
    (tiny_dataset.path / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(DataError, match="fingerprint"):
        PreparedData(tiny_dataset.path)


def test_huge_values_and_undecodable_bytes_are_skipped_and_counted(tmp_path):
    rows = synthetic_rows(num_users=400, num_items=30, per_user=12)
    head = "".join(f"{i},{u},{r},{t}\n" for i, u, r, t in rows).encode()  # UTF-8 past the 64 KB the encoding is
    assert len(head) > 1 << 16  # guessed from, so the bad bytes below are read as UTF-8 that does not decode
    (tmp_path / "r.csv").write_bytes(head + b"I1,U1,5,1e30\n" + b"I\xff\xfe1,U1,5,100\n" + b"I2,U2,5,-1e300\n")
    raw = read_interactions(tmp_path / "r.csv")
    n = len(rows)
    assert raw.malformed == 3 and raw.malformed_examples == [n + 1, n + 2, n + 3]
    assert len(raw.user) == n  # every good line kept


def _amazon_rows(num_users=40, num_items=12, per_user=6, seed=0):
    """(ASIN, reviewer id, rating, time) rows shaped as Amazon's ids: more users than items."""
    rng = np.random.default_rng(seed)
    asins = [f"B{i:09d}" if i % 3 else f"{i:09d}X" for i in range(num_items)]
    rows = []
    for u in range(num_users):
        for t, i in enumerate(rng.choice(num_items, per_user, replace=False)):
            rows.append((asins[i], f"A{u:013d}", 5.0, 1000 + 10 * t + u))
    return rows


@pytest.mark.parametrize(
    "name,layout,forced,read_as",
    [
        ("ratings_Clothing.csv", "user,item", None, "amazon-2014-csv"),  # 2014 by name and by ids
        ("Clothing.csv", "user,item", None, "amazon-2014-csv"),  # named like 2018, laid out like 2014: the ids win
        ("ratings_Clothing.csv", "item,user", None, "amazon-csv"),  # named like 2014, laid out like 2018
        ("Clothing.csv", "item,user", "amazon-csv", "amazon-csv"),
        ("Clothing.csv", "user,item", "amazon-csv", "refused"),  # a --format the ids contradict
        ("Clothing.csv", "item,user", "amazon-2014-csv", "refused"),
    ],
)
def test_amazon_2014_and_2018_columns_are_told_apart_by_their_ids(tmp_path, caplog, name, layout, forced, read_as):
    rows = _amazon_rows()
    src = tmp_path / name
    src.write_text(
        "".join((f"{u},{i},{r},{t}\n" if layout == "user,item" else f"{i},{u},{r},{t}\n") for i, u, r, t in rows)
    )
    cfg = PrepareConfig(str(src), format=forced, num_negatives=3)
    if read_as == "refused":
        other = "amazon-2014-csv" if forced == "amazon-csv" else "amazon-csv"
        with pytest.raises(DataError, match=f"ids are laid out {layout} .*: pass --format {other}"):
            prepare(cfg, tmp_path / "p")
        return
    stats = prepare(cfg, tmp_path / "p")
    assert stats["users"] == 40 and stats["items"] == 12  # never swapped
    assert json.loads((tmp_path / "p" / "prepare_config.json").read_text())["format"] == read_as
    assert ("its ids are laid out" in caplog.text) == (formats.detect_format(src) != read_as)


def test_ids_of_another_shape_keep_the_named_format(tmp_path):
    src = write_amazon_csv(tmp_path / "ratings_Books.csv", synthetic_rows())  # item,user but ids I1, U1
    assert formats.amazon_layout(src) is None
    prepare(PrepareConfig(str(src), num_negatives=3), tmp_path / "p")
    assert json.loads((tmp_path / "p" / "prepare_config.json").read_text())["format"] == "amazon-2014-csv"


def test_peak_rss_is_the_childs_own_not_its_parents():
    """The benchmarks' peak memory: a child of a large process reports its own peak (getrusage's ru_maxrss would
    start it at the parent's size), and memory the child does touch shows."""
    ballast = np.ones(2**27)  # 1 GiB in this process
    probe = (
        "import sys, numpy as np; from slmrec.machine import peak_rss_mb; x = np.ones(int(sys.argv[1])); "
        "print(peak_rss_mb())"
    )
    small, large = (
        float(subprocess.run([sys.executable, "-c", probe, str(n)], check=True, capture_output=True, text=True).stdout)
        for n in (1, 2**26)
    )
    assert ballast[0] == 1 and small < 900, small
    assert 400 < large - small < 700, (small, large)  # the child's 512 MiB
