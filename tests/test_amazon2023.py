"""Amazon Reviews 2023 as it comes (review JSON lines, metadata, the benchmark CSVs) and a published split used as
given (--split given): read by both readers alike, the units of time told apart, the split's rows kept, and every
stage run on it."""

import gzip
import json

import numpy as np
import pytest

import evaluate as evaluate_cli
import recommend
import train_sr_trad
from conftest import synthetic_rows, write_amazon_csv
from slmrec import columnar
from slmrec.data import PreparedData
from slmrec.errors import DataError
from slmrec.metrics import evaluate
from slmrec.prepare import PrepareConfig, prepare
from slmrec.columnar import read_columnar
from slmrec.formats import detect_format
from slmrec.raw import read_interactions, read_lines
from test_readers import _same

T1, T2 = 1628643414042, 1658002729837  # the 2023 benchmark's split times (milliseconds)


def review(user, item, rating, ms, variant=None, **extra):
    """One line of a 2023 review file, with the fields the release has."""
    return {
        "rating": rating,
        "title": "Great ✓",
        "text": "fits \ufffd well",  # a replacement character in a field no reader uses: kept either way
        "images": [{"small_image_url": "https://x/y.jpg"}],
        "asin": variant or f"V{item}",
        "parent_asin": item,
        "user_id": user,
        "timestamp": ms,
        "helpful_vote": 0,
        "verified_purchase": True,
        **extra,
    }


def write_reviews(path, rows, gz=False):
    """rows: (item, user, rating, seconds) as synthetic_rows gives them, written in the 2023 layout (ms)."""
    text = "".join(json.dumps(review(u, i, r, t * 1000)) + "\n" for i, u, r, t in rows)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_2023_reviews_give_the_dataset_of_the_same_ratings_in_2018_layout(tmp_path, gz):
    rows = [(i, u, r, t + 1_500_000_000) for i, u, r, t in synthetic_rows(num_users=12, num_items=10, per_user=6)]
    rows.append(("I1", "U0", 2.0, 1_500_009_999))  # filtered by the protocol's rating threshold in both
    csv_2018 = write_amazon_csv(tmp_path / "Clothing.csv", rows)
    reviews = write_reviews(tmp_path / ("Clothing.jsonl" + (".gz" if gz else "")), rows, gz)
    meta = tmp_path / "meta_Clothing.jsonl"
    meta.write_text("".join(json.dumps({"parent_asin": f"I{i}", "title": f"Item {i}"}) + "\n" for i in range(10)))
    assert detect_format(reviews) == "amazon-2023-json"
    a = prepare(PrepareConfig(str(csv_2018), num_negatives=5), tmp_path / "a")
    b = prepare(PrepareConfig(str(reviews), num_negatives=5, metadata=str(meta)), tmp_path / "b")
    assert a["fingerprint"] == b["fingerprint"]
    assert (a["time_unit"], b["time_unit"]) == ("s", "ms")
    assert b["reader"] == ("lines" if gz else "columnar") and b["items_with_title"] == b["items"]
    assert json.loads((tmp_path / "b/prepare_config.json").read_text())["format"] == "amazon-2023-json"
    # the variant as the item: each review's own asin, so other items
    c = prepare(PrepareConfig(str(reviews), num_negatives=5, item_key="asin"), tmp_path / "c")
    assert c["fingerprint"] != a["fingerprint"] or PreparedData(tmp_path / "c").items()[0][1].startswith("V")
    with pytest.raises(DataError, match="unknown item key 'sku'"):
        prepare(PrepareConfig(str(reviews), item_key="sku"), tmp_path / "d")


ODD_VALUES = [5, 5.0, -1, True, None, [1], {"a": 1}, "", " U1", "U\ufffd", "12", "1e3", "null", "Ü", "U,1"]


def _odd_review_lines(rng, n=2500):
    """JSON lines of a 2023 review file, 3 in 10 with an odd id, rating or time, or not JSON at all."""
    lines = []
    for _ in range(n):
        row = review(f"A{rng.integers(40)}", f"B{rng.integers(25)}", float(rng.choice([4, 5, 3])), 1600000000000)
        row["timestamp"] += int(rng.integers(30))  # ties broken by line order
        kind = rng.random()
        if kind < 0.02:
            lines.append(rng.choice(["[]", '"x"', "{}", "5", "null"]) + "\n")  # JSON, but not a review
            continue
        if kind < 0.3:
            key = ["user_id", "parent_asin", "rating", "timestamp"][rng.integers(4)]
            pool = ODD_VALUES + ([2**53 + 1, -(2**60)] if key == "timestamp" else [])
            value = pool[rng.integers(len(pool))]
            if rng.random() < 0.1:
                del row[key]
            else:
                row[key] = value
        lines.append(json.dumps(row, ensure_ascii=rng.random() < 0.5) + ("\r\n" if rng.random() < 0.1 else "\n"))
    return lines


@pytest.mark.parametrize("seed", [0, 1])
def test_the_columnar_reader_reads_2023_json_lines_as_the_line_reader(tmp_path, seed):
    lines = _odd_review_lines(np.random.default_rng(seed))
    path = tmp_path / "r.jsonl"
    path.write_text("".join(lines), encoding="utf-8", newline="")
    lines_read = read_lines(path, "amazon-2023-json", 3.0)
    columnar = read_columnar(path, "amazon-2023-json", 3.0)
    if columnar is None:  # a line the engine refuses hands the whole file over: then only its numbers matter
        pytest.fail("the engine refused the file: the test no longer exercises the columnar path")
    assert lines_read.malformed > 100 and len(lines_read.user) > 1000
    _same(columnar, lines_read)


def test_a_looser_json_id_rule_is_caught(tmp_path, monkeypatch):
    """The comparison above fails if the engine's reading of a number as an id were taken as plain."""
    path = tmp_path / "r.jsonl"
    path.write_text("".join(_odd_review_lines(np.random.default_rng(0))), encoding="utf-8", newline="")
    expected = read_lines(path, "amazon-2023-json", 3.0)
    monkeypatch.setattr(columnar, "JSON_NOT_STRING", r"^$x")  # matches nothing
    with pytest.raises(AssertionError):
        _same(read_columnar(path, "amazon-2023-json", 3.0), expected)


def test_a_byte_that_is_not_utf8_in_an_unused_field_past_the_first_64kb_reads_the_same_either_way(tmp_path):
    """Issue 36, class 2: an undecodable byte where no reader looks (a review's text), after the sample the
    encoding is told from, gives one dataset whichever reader reads it; in an id the row is malformed in both."""
    good = "".join(f"I{k % 40},U{k % 9},5,{1000 + k}\n" for k in range(5000)).encode()
    path = tmp_path / "r.csv"
    path.write_bytes(good + b"I41,U1,5,7000,caf\xe9\nI\xe942,U1,5,7001\n")
    a, b = read_interactions(path, "amazon-csv"), read_interactions(path, "amazon-csv", reader="lines")
    assert a.reader == "columnar" and b.reader == "lines"
    _same(a, b)
    assert "I41" in a.item_names and a.malformed == 1


def test_2023_benchmark_csv_with_header_and_history_reads_alike(tmp_path):
    rng = np.random.default_rng(3)
    lines = ["user_id,parent_asin,rating,timestamp,history\n"]
    for k in range(3000):
        u, i = f"AGKASBHYZPGTEPO6LWZPVJWB{k % 50:04d}", f"B00{rng.integers(30):07d}"
        lines.append(f"{u},{i},{rng.choice(['1.0', '5.0', '4.0'])},{1452647382000 + k},B001 B002\n")
    lines.insert(7, "short,line\n")
    path = tmp_path / "Toys_and_Games.train.csv"
    path.write_text("".join(lines))
    assert detect_format(path) == "amazon-2023-csv"
    a = read_interactions(path, rating_threshold=-np.inf)
    b = read_interactions(path, rating_threshold=-np.inf, reader="lines")
    assert a.reader == "columnar" and a.format == "amazon-2023-csv" and a.time_unit == "ms"
    _same(a, b)
    assert len(a.user) == 3000 and a.malformed == 1
    # written without a header, as the benchmark's scripts write them: user,item,... told from the ids
    headless = tmp_path / "Toys.test.csv"
    headless.write_text("".join(lines[1:7] + lines[8:]))
    c = read_interactions(headless, rating_threshold=-np.inf)
    assert c.format == "amazon-2014-csv" and c.user_names == a.user_names


def test_seconds_and_milliseconds_in_one_file_are_refused_naming_a_line_of_each(tmp_path):
    """Issue 36, class 7: ordered together, every millisecond time would come after every second."""
    rows = synthetic_rows(num_users=12, num_items=10, per_user=6)
    rows = [(i, u, r, t + 1_500_000_000) for i, u, r, t in rows]
    rows[5] = (rows[5][0], rows[5][1], 5.0, rows[5][3] * 1000)
    src = write_amazon_csv(tmp_path / "r.csv", rows)
    with pytest.raises(DataError, match=r"seconds and in milliseconds in one file \(line 1: .*line 6: "):
        prepare(PrepareConfig(str(src), num_negatives=3), tmp_path / "p")
    assert not (tmp_path / "p").exists()
    rows[5] = (rows[5][0], rows[5][1], 5.0, rows[5][3] // 1000)
    assert prepare(PrepareConfig(str(write_amazon_csv(src, rows)), num_negatives=3), tmp_path / "p")["time_unit"] == "s"


# ---------------------------------------------------------------- a published split, used as given


def rating_only(num_users=20, num_items=30, seed=0):
    """(user, item, rating, ms) rows, each user's distinct items in time order, some ratings low, times that
    straddle the 2023 benchmark's split times."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(num_users):
        n = int(rng.integers(3, 9))
        times = np.sort(rng.integers(T1 - 4 * 10**10, T2 + 4 * 10**10, n))
        for i, t in zip(rng.choice(num_items, n, replace=False), times):
            rows.append((f"AUSER{u:023d}", f"B{i:09d}", float(rng.choice([1.0, 4.0, 5.0])), int(t)))
    return rows


def write_split(folder, rows, kind, history, header=True, name="Beauty"):
    """The benchmark's split of rating_only rows (last_out: each user's last row to test, the one before to
    valid; timestamp: by T1 and T2), written as its files are, with the history column if asked."""
    folder.mkdir(parents=True, exist_ok=True)
    by_user = {}
    for r in rows:
        by_user.setdefault(r[0], []).append(r)
    out = {k: [] for k in ("train", "valid", "test")}
    for user_rows in by_user.values():
        user_rows.sort(key=lambda r: r[3])
        for k, r in enumerate(user_rows):
            if kind == "last_out":
                split = "test" if k == len(user_rows) - 1 else "valid" if k == len(user_rows) - 2 else "train"
            else:
                split = "test" if r[3] >= T2 else "valid" if r[3] >= T1 else "train"
            line = ",".join(map(str, r)) + ("," + " ".join(x[1] for x in user_rows[:k]) if history else "")
            out[split].append(line + "\n")
    for k, lines in out.items():
        head = "user_id,parent_asin,rating,timestamp" + (",history" if history else "") + "\n"
        (folder / f"{name}.{k}.csv").write_text((head if header else "") + "".join(lines))
    return {k: [line.split(",")[:4] for line in lines] for k, lines in out.items()}


@pytest.mark.parametrize("kind", ["last_out", "timestamp"])
@pytest.mark.parametrize("history", [False, True])
def test_a_given_split_keeps_its_rows(tmp_path, kind, history):
    rows = rating_only()
    rows.append(("AUSER_COLD", "B_ONLY_IN_TEST", 5.0, T2 + 5))  # a user with one row and an item never trained
    files = write_split(tmp_path / kind, rows, kind, history)
    stats = prepare(PrepareConfig(str(tmp_path / kind), split="given", num_negatives=7), tmp_path / "p")
    d = PreparedData(tmp_path / "p")
    assert d.given and stats["split"] == "given" and stats["split_kind"] == kind
    assert stats["history_column"] == {
        "valid": "checked" if history else "absent",
        "test": "checked" if history else "absent",
    }
    assert stats["time_unit"] == "ms" and stats["items_only_in_valid_or_test"] >= 1
    assert stats["files"]["train"]["ratings_not_above_threshold"] == 0  # no rating filter: low ratings kept
    ids, _ = d.items()
    users = d.users()
    # every validation and test row is a row of the split, unless nothing comes before it (counted)
    for split in ("valid", "test"):
        ours = sorted((users[int(u)], ids[d.target(r, split)]) for r, (u, _) in enumerate(d.eval_rows[split]))
        theirs = sorted((u, i) for u, i, _, _ in files[split])
        assert stats["rows_without_history"][split] == len(theirs) - len(ours)
        assert set(ours) <= set(theirs)
        for r in range(d.num_rows(split)):
            u = int(d.eval_rows[split][r][0])
            earlier = [
                x for x in rows if x[0] == users[u] and x[3] < rows_time(rows, users[u], ids[d.target(r, split)])
            ]
            assert [ids[i] for i in d.history(r, split)] == [x[1] for x in sorted(earlier, key=lambda x: x[3])]
    # training sees the training file's rows only
    train = {}
    for u, i, _, t in files["train"]:
        train.setdefault(u, []).append((int(t), i))
    for u, name in enumerate(users):
        assert [ids[i] for i in d.train_part(u)] == [i for _, i in sorted(train.get(name, []))]
    assert ("AUSER_COLD", "B_ONLY_IN_TEST") not in {
        (users[int(u)], ids[d.target(r, "test")]) for r, (u, _) in enumerate(d.eval_rows["test"])
    }
    # the split's arrays are in the fingerprint: one changed is refused at open
    eval_test = np.load(tmp_path / "p/eval_test.npy")
    eval_test[0, 1] -= 1 if eval_test[0, 1] > 1 else -1
    np.save(tmp_path / "p/eval_test.npy", eval_test)
    with pytest.raises(DataError, match="edited or corrupt"):
        PreparedData(tmp_path / "p")


def rows_time(rows, user, item):
    return next(t for u, i, _, t in rows if u == user and i == item)


def test_a_given_split_named_by_its_files_and_without_headers(tmp_path):
    rows = rating_only(seed=1)
    write_split(tmp_path / "s", rows, "last_out", history=True, header=False)
    s = tmp_path / "s"
    a = prepare(
        PrepareConfig(
            "",
            split="given",
            train=str(s / "Beauty.train.csv"),
            valid=str(s / "Beauty.valid.csv"),
            test=str(s / "Beauty.test.csv"),
            num_negatives=7,
        ),
        tmp_path / "a",
    )
    write_split(tmp_path / "h", rows, "last_out", history=True, header=True)
    b = prepare(PrepareConfig(str(tmp_path / "h"), split="given", num_negatives=7), tmp_path / "b")
    assert a["fingerprint"] == b["fingerprint"]
    assert a["history_column"]["test"] == "absent" and b["history_column"]["test"] == "checked"


def test_a_history_column_that_disagrees_is_refused_naming_the_line(tmp_path):
    write_split(tmp_path / "s", rating_only(), "last_out", history=True)
    test = tmp_path / "s/Beauty.test.csv"
    lines = test.read_text().splitlines(keepends=True)
    lines[3] = lines[3].rstrip("\n") + " B000000099\n"
    test.write_text("".join(lines))
    with pytest.raises(DataError, match=r"Beauty.test.csv line 4: its history column"):
        prepare(PrepareConfig(str(tmp_path / "s"), split="given", num_negatives=7), tmp_path / "p")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    "case,message",
    [
        ("two-sets", "expected one set of <name>.train/.valid/.test files, found Beauty.*.csv, Toys.*.csv"),
        ("no-set", "expected one set of <name>.train/.valid/.test files, found none"),
        ("two-files", "takes all three of --train, --valid, --test"),
        ("file-not-folder", "is not a folder"),
        ("loo-with-train", "--train names a split's file: it goes with --split given"),
        ("bad-split", "--split must be one of"),
    ],
)
def test_a_given_split_that_cannot_be_found_is_one_line_before_any_work(tmp_path, case, message):
    rows = rating_only()
    write_split(tmp_path / "s", rows, "last_out", history=False)
    cfg = PrepareConfig(str(tmp_path / "s"), split="given")
    if case == "two-sets":
        write_split(tmp_path / "s", rows, "last_out", history=False, name="Toys")
    elif case == "no-set":
        cfg.source = str(tmp_path)
    elif case == "two-files":
        cfg.train, cfg.valid = str(tmp_path / "s/Beauty.train.csv"), str(tmp_path / "s/Beauty.valid.csv")
    elif case == "file-not-folder":
        cfg.source = str(tmp_path / "s/Beauty.train.csv")
    elif case == "loo-with-train":
        cfg.split, cfg.train = "leave-one-out", str(tmp_path / "s/Beauty.train.csv")
    elif case == "bad-split":
        cfg.split = "random"
    with pytest.raises(DataError, match=message.replace("*", r"\*").replace("(", r"\(")):
        prepare(cfg, tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_training_and_both_rankings_run_on_a_given_split(tmp_path):
    """SASRec trains on the training rows and is evaluated on each test row; the evaluator's ranks agree with a
    hand computation over the rows (candidates, and full ranking with the history left out)."""
    import torch

    write_split(tmp_path / "s", rating_only(num_users=40, seed=2), "timestamp", history=True)
    prepare(PrepareConfig(str(tmp_path / "s"), split="given", num_negatives=9), tmp_path / "p")
    d = PreparedData(tmp_path / "p")
    out = tmp_path / "sasrec"
    train_sr_trad.main(
        str(d.path), str(out), hidden_size=8, num_layers=1, num_heads=2, max_len=8, epochs=2, batch_size=8
    )
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert 0 <= metrics["HR@10"] <= 1 and 0 <= metrics["full"]["HR@10"] <= 1
    assert len(np.load(out / "test_ranks.npz")["candidates"]) == d.num_rows("test")  # a rank per test row
    # evaluate.py and recommend.py on it: the same numbers again, and a user's list from their whole history
    assert evaluate_cli.main(str(out), str(d.path))["MRR"] == pytest.approx(metrics["MRR"], abs=1e-6)
    recommend.main(str(out), str(d.path), user=d.users()[0], k=3, output=str(tmp_path / "rec.jsonl"))
    row = json.loads((tmp_path / "rec.jsonl").read_text())
    assert row["user"] == d.users()[0] and len(row["items"]) == 3
    assert not {it["item"] for it in row["items"]} & {d.items()[0][i] for i in d.sequences[0]}  # seen ones left out

    g = torch.Generator().manual_seed(0)
    table = torch.randn(d.num_items + 1, generator=g)

    def score(history):  # the same scores for every row: ranks follow from the table alone
        return table.expand(len(history), -1).clone()

    got = evaluate(score, d, "test", max_len=8, per_user=True)["ranks"]
    assert (
        len(got["candidates"]) == d.num_rows("test") > len(set(d.eval_rows["test"][:, 0].tolist()))
    )  # rows, not users
    for r in range(d.num_rows("test")):
        cand = d.candidate_rows("test", [r])[0]
        cand = cand[cand > 0]
        assert got["candidates"][r] == int((table[cand[1:]] > table[cand[0]]).sum())
        seen = set(d.history(r, "test").tolist())
        target = d.target(r, "test")
        others = [i for i in range(1, d.num_items + 1) if i != target and i not in seen]
        assert got["full"][r] == int((table[others] > table[target]).sum())


def test_2023_reviews_as_parquet_give_the_dataset_of_their_json_lines(tmp_path):
    """The hub's Parquet conversion of a review file: the same dataset as the JSON lines, odd rows counted."""
    import polars as pl

    rows = [(i, u, r, t + 1_500_000_000) for i, u, r, t in synthetic_rows(num_users=12, num_items=10, per_user=6)]
    reviews = write_reviews(tmp_path / "Beauty.jsonl", rows)
    frame = pl.read_ndjson(reviews).select("rating", "asin", "parent_asin", "user_id", "timestamp")
    odd = pl.DataFrame(
        {
            "rating": [5.0, None, 5.0, float("nan")],
            "asin": ["V1"] * 4,
            "parent_asin": ["I1", "I2", " ", "I3"],
            "user_id": ["U99", "U98", "U97", "U96"],
            "timestamp": [1, 2, 3, 4],
        }
    )
    pl.concat([frame, odd]).write_parquet(tmp_path / "Beauty.parquet")
    assert detect_format(tmp_path / "Beauty.parquet") == "amazon-2023-parquet"
    a = prepare(PrepareConfig(str(reviews), num_negatives=5), tmp_path / "a")
    b = prepare(PrepareConfig(str(tmp_path / "Beauty.parquet"), num_negatives=5, reader="lines"), tmp_path / "b")
    assert a["fingerprint"] == b["fingerprint"] and b["reader"] == "columnar"
    n = len(rows)
    assert (b["malformed_lines"], b["malformed_examples"]) == (2, [n + 2, n + 3])  # no rating, an empty item
    assert b["ratings_not_above_threshold"] == a["ratings_not_above_threshold"] + 1  # NaN is not above 3
    pl.DataFrame({"user_id": ["U1"], "rating": [5.0]}).write_parquet(tmp_path / "x.parquet")
    with pytest.raises(DataError, match=r"x.parquet: no parent_asin, timestamp column \(found: user_id, rating\)"):
        read_interactions(tmp_path / "x.parquet")


def test_a_given_split_filters_only_when_asked(tmp_path):
    rows = rating_only(seed=5)
    write_split(tmp_path / "s", rows, "last_out", history=False)
    kept = prepare(PrepareConfig(str(tmp_path / "s"), split="given", num_negatives=5), tmp_path / "kept")
    asked = prepare(
        PrepareConfig(str(tmp_path / "s"), split="given", num_negatives=5, rating_threshold=3.0, k_core=2),
        tmp_path / "asked",
    )
    low = sum(r[2] <= 3 for r in rows)
    assert kept["interactions"] == len(rows) and low > 0
    assert sum(asked["files"][k]["ratings_not_above_threshold"] for k in ("train", "valid", "test")) == low
    assert asked["interactions"] <= len(rows) - low
    config = json.loads((tmp_path / "kept" / "prepare_config.json").read_text())
    assert (config["split"], config["rating_threshold"], config["k_core"]) == ("given", None, None)
    assert config["train"].endswith("Beauty.train.csv")


def test_a_hash_collision_in_parquet_codes_the_ids_the_line_readers_way(tmp_path, monkeypatch):
    """Parquet has no line reader to hand over to: two ids sharing a hash are coded as the line reader codes."""
    import polars as pl

    rows = [(i, u, r, t + 1_500_000_000) for i, u, r, t in synthetic_rows(num_users=12, num_items=10, per_user=6)]
    frame = pl.read_ndjson(write_reviews(tmp_path / "r.jsonl", rows))
    frame.select("rating", "parent_asin", "user_id", "timestamp").write_parquet(tmp_path / "r.parquet")
    expected = read_interactions(tmp_path / "r.parquet")
    monkeypatch.setattr(pl.Series, "hash", lambda self, seed=0: pl.Series([0] * len(self), dtype=pl.UInt64))
    collided = read_interactions(tmp_path / "r.parquet")
    _same(collided, expected)
    assert len(collided.user_names) == 12
