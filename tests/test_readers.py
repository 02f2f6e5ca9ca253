"""The columnar reader (Polars) against the line reader: the same Interactions, line for line, on files mixing
plain lines with every kind of odd one; and the files it hands to the line reader because it cannot be exact."""

import gzip

import numpy as np
import pytest

from slmrec import columnar
from slmrec.prepare import PrepareConfig, prepare
from slmrec.columnar import read_columnar
from slmrec.errors import DataError
from slmrec.raw import read_interactions, read_lines

# Values the line reader reads, or refuses, in its own way: spaces it strips, bytes that are not ASCII, numbers
# that only Python's float() takes (Arabic-Indic digits, underscores, exponents), values past 2**53 or int64.
ODD_IDS = [" U1", "U1 ", "U\x001", "Ü1", "", "U\x1c", "U\u00a0", "\ufffd", 'U"1', "U'1", "U\t1", "U,1"]
ODD_RATINGS = [
    "3",
    "1",
    "2.5",
    "3.0000001",
    " 4",
    "4 ",
    "4e0",
    "nan",
    "inf",
    "-inf",
    "",
    "x",
    "1_0",
    "-4",
    "+5",
    "\u0664",
    "0x10",
    "4.",
    ".5",
]
ODD_TIMES = [
    "1.5e1",
    "99999999999999999",
    "9007199254740993",
    "",
    "inf",
    "nan",
    " 12",
    "12 ",
    "-5",
    "1e19",
    "\u0661\u0662",
    "1_000",
    "12.0",
    "9" * 30,
]


def _mixed_lines(rng, sep, order, n=3000):
    """n lines of (user, item, rating, time) placed at `order` in `sep`-separated fields, 3 in 10 odd."""
    lines = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.03:
            lines.append(rng.choice(["", "  ", sep * 3, "garbage"]) + "\n")
            continue
        fields = [
            f"U{rng.integers(40)}",
            f"I{rng.integers(25)}",
            str(rng.choice(["4", "5", "4.0", "5.0", "3"])),
            str(rng.integers(1000, 1030)),
        ]  # few distinct times: ties that the line order breaks
        if kind < 0.3:
            k = rng.integers(4)
            pool = [ODD_IDS, ODD_IDS, ODD_RATINGS, ODD_TIMES][k]
            fields[k] = pool[rng.integers(len(pool))]
        row = [""] * (max(order) + 1)
        for value, at in zip(fields, order):
            row[at] = value
        if rng.random() < 0.03:
            row = row[: rng.integers(1, len(row))]  # too few fields
        elif rng.random() < 0.05:
            row += ["extra", "x"]  # more than the format needs: ignored
        lines.append(sep.join(row) + ("\r\n" if rng.random() < 0.1 else "\n"))
    return lines


def _same(a, b):
    for k in ("user", "item", "time", "line"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    for k in (
        "user_names",
        "item_names",
        "lines_read",
        "malformed",
        "malformed_examples",
        "rating_filtered",
        "damaged",
        "format",
    ):
        assert getattr(a, k) == getattr(b, k), k


LAYOUTS = [
    ("amazon-csv", ",", (1, 0, 2, 3), None),
    ("amazon-2014-csv", ",", (0, 1, 2, 3), None),
    ("ml-100k", "\t", (0, 1, 2, 3), None),
    ("recbole", "\t", (1, 0, 3, 2), "item_id:token\tuser_id:token\ttimestamp:float\trating:float\n"),
]


@pytest.mark.parametrize("fmt,sep,order,header", LAYOUTS, ids=[x[0] for x in LAYOUTS])
@pytest.mark.parametrize("seed", [0, 1])
def test_columnar_reads_as_the_line_reader(tmp_path, fmt, sep, order, header, seed):
    lines = _mixed_lines(np.random.default_rng(seed), sep, order)
    lines[-1] = lines[-1].rstrip("\r\n")  # the last line without its end
    if seed:
        lines.insert(0, "\n")  # a blank first line
    path = tmp_path / "r.txt"
    path.write_text((header or "") + "".join(lines), encoding="utf-8", newline="")
    columnar, lines_read = read_columnar(path, fmt, 3.0), read_lines(path, fmt, 3.0)
    assert columnar is not None and columnar.reader == "columnar"
    assert lines_read.malformed > 100 and len(lines_read.user) > 1000  # both kinds of line, many of each
    _same(columnar, lines_read)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # a loose time rule lets NaN through
def test_a_looser_rule_for_plain_fields_is_caught(tmp_path, monkeypatch):
    """The comparison above fails if the engine parses values the line reader reads otherwise."""
    lines = _mixed_lines(np.random.default_rng(0), ",", (1, 0, 2, 3))
    path = tmp_path / "r.csv"
    path.write_text("".join(lines), encoding="utf-8", newline="")
    expected = read_lines(path, "amazon-csv", 3.0)
    for name, loose in (("PLAIN_ID", r"^[^,]+$"), ("PLAIN_RATING", r"^.+$"), ("PLAIN_TIME", r"^[-0-9.e]+$")):
        with monkeypatch.context() as m:
            m.setattr(columnar, name, loose)
            with pytest.raises(AssertionError):
                _same(read_columnar(path, "amazon-csv", 3.0), expected)


@pytest.mark.parametrize(
    "case",
    [
        "lone-cr",
        "lone-cr-in-extra-field",
        "gzip",
        "cp1252",
        "bom",
        "ml-1m",
        "json-blank-line",
        "json-not-json",
        "first-100-bad",
        "many-not-plain",
    ],
)
def test_files_the_columnar_reader_hands_to_the_line_reader(tmp_path, monkeypatch, case):
    good = "".join(f"I{k % 7},U{k % 11},5,{1000 + k}\n" for k in range(200))
    path, fmt = tmp_path / "r.csv", "amazon-csv"
    if case == "lone-cr":
        path.write_bytes(good.encode() + b"I1,U1,5,1\rI2,U1,5,2\n")
    elif case == "lone-cr-in-extra-field":  # the engine drops the extra field; the line reader sees two lines
        path.write_bytes(good.encode() + b"I1,U1,5,1,x\ry\nI2,U1,5,2\n")
    elif case == "gzip":
        path = tmp_path / "r.csv.gz"
        path.write_bytes(gzip.compress(good.encode()))
    elif case == "cp1252":
        path.write_bytes(good.encode() + "I\u00e91,U1,5,1\n".encode("cp1252"))
    elif case == "bom":
        path.write_bytes(b"\xef\xbb\xbf" + good.encode())
    elif case == "ml-1m":
        path, fmt = tmp_path / "ratings.dat", "ml-1m"
        path.write_text(good.replace(",", "::"))
    elif case.startswith("json"):  # a blank line (the engine skips it: its numbering differs) or a broken line
        path, fmt = tmp_path / "r.json", "amazon-json"
        line = '{"reviewerID": "U1", "asin": "I1", "overall": 5, "unixReviewTime": 1}\n'
        path.write_text(line + ("\n" if case == "json-blank-line" else "{broken\n") + line)
    elif case == "first-100-bad":
        path.write_text("a,b\n" * 150 + good)
    elif case == "many-not-plain":
        monkeypatch.setattr(columnar, "MAX_NOT_PLAIN", 10)
        path.write_text(good.replace(",5,", ", 5,"))
    assert read_columnar(path, fmt, 3.0) is None
    if case == "first-100-bad":
        with pytest.raises(DataError, match="the first 100 lines do not parse"):
            read_interactions(path, fmt)
        return
    result = read_interactions(path, fmt)
    assert result.reader == "lines"
    _same(result, read_lines(path, fmt, 3.0))


def test_both_readers_prepare_the_same_dataset(tmp_path):
    lines = _mixed_lines(np.random.default_rng(2), ",", (1, 0, 2, 3), n=4000)
    path = tmp_path / "r.csv"
    path.write_text("".join(lines), encoding="utf-8", newline="")
    stats = {
        reader: prepare(
            PrepareConfig(str(path), format="amazon-csv", num_negatives=5, reader=reader), tmp_path / reader
        )
        for reader in ("columnar", "lines")
    }
    assert stats["columnar"]["reader"] == "columnar" and stats["lines"]["reader"] == "lines"
    assert stats["columnar"]["malformed_lines"] > 100
    assert {k: v for k, v in stats["columnar"].items() if k != "reader"} == {
        k: v for k, v in stats["lines"].items() if k != "reader"
    }
    for name in ("users.tsv", "items.tsv"):
        assert (tmp_path / "columnar" / name).read_bytes() == (tmp_path / "lines" / name).read_bytes()


def test_an_unknown_reader_is_refused_before_reading(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("I1,U1,5,1\n")
    with pytest.raises(DataError, match="unknown reader 'fast'; choose one of"):
        prepare(PrepareConfig(str(path), reader="fast"), tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_a_hash_collision_hands_the_file_to_the_line_reader(tmp_path, monkeypatch):
    import polars as pl

    path = tmp_path / "r.csv"
    path.write_text("".join(f"I{k % 7},U{k % 11},5,{1000 + k}\n" for k in range(200)))
    monkeypatch.setattr(pl.Series, "hash", lambda self, seed=0: pl.Series([0] * len(self), dtype=pl.UInt64))
    assert read_columnar(path, "amazon-csv", 3.0) is None
    result = read_interactions(path, "amazon-csv")
    assert result.reader == "lines" and len(result.user_names) == 11
