"""The raw ratings formats: what each holds and how a line of it is parsed, how a format and a text encoding are
told from a file, and the Interactions both readers return (slmrec/raw.py reads line by line, slmrec/columnar.py
with Polars' engine; docs/data.md)."""

import codecs
import gzip
import io
import itertools
import json
import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

log = logging.getLogger(__name__)

FORMATS = (
    "amazon-csv",
    "amazon-2014-csv",
    "amazon-json",
    "amazon-2023-json",
    "amazon-2023-csv",
    "amazon-2023-parquet",
    "ml-100k",
    "ml-1m",
    "recbole",
)
ITEM_KEYS = ("parent_asin", "asin")  # Amazon 2023's two item ids: the product (its benchmark's item) and a variant
CHUNK_LINES = 1_000_000


def text_encoding(head: bytes) -> str:
    """The encoding of a file from its first bytes: a byte-order mark (UTF-8 or UTF-16, as spreadsheets export),
    else UTF-8 when they decode as such, else Windows-1252 (a spreadsheet's "CSV" on Windows; Latin-1 text too)."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of the sample
            return "cp1252"
    return "utf-8"


def open_text(path: Path):
    """A text stream over a plain or gzip file in its own encoding (text_encoding)."""
    try:
        with open(path, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        raw = gzip.open(path, "rb") if gz else open(path, "rb")
        try:
            head = raw.read(1 << 16)
        except (EOFError, OSError, zlib.error):  # damaged compressed data: read_interactions reports it
            head = b""
        raw.seek(0)
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from e
    encoding = text_encoding(head)
    if encoding != "utf-8":
        log.info("%s: reading as %s", path, encoding)
    return io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="")


def text_lines(path):
    """(line number, text) of a UTF-8 text file read strictly (JSON lines, the prepared dataset's TSVs): a
    byte-order mark is dropped, lines end at "\\n" only (a CRLF's "\\r" stays for the caller's strip), and a line
    that is not UTF-8 is a one-line DataError naming the file and the line."""
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from e
    with fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                bad = raw[e.start : e.start + 1]
                raise DataError(
                    f"{path} line {n}: not UTF-8 text (byte {e.start + 1} is {bad!r}); save the file as UTF-8"
                ) from None
            yield n, line


# What a line that cannot be used raises while it is parsed: it is skipped and counted, whatever it holds.
BAD_LINE = (ValueError, KeyError, TypeError, IndexError, OverflowError, RecursionError, AttributeError)
# What damaged compressed input raises while it is read: what was read before is kept.
DAMAGED = (EOFError, OSError, zlib.error)


def as_id(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"an id must be a string or an integer, not {type(value).__name__}")
    return str(value).strip()


def _first_line(path: Path) -> str:
    """The file's first line that is not blank ("" if none in its first thousand)."""
    with open_text(path) as fh:
        try:
            for line in itertools.islice(fh, 1000):
                if line.strip():
                    return line
        except DAMAGED:  # read_interactions reports it
            pass
    return ""


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".inter"):
        return "recbole"
    if name.startswith("u.data"):
        return "ml-100k"
    if name.startswith("ratings.dat"):
        return "ml-1m"
    if name.endswith(".parquet"):
        return "amazon-2023-parquet"
    first = _first_line(path)
    if name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")) or first.lstrip().startswith("{"):
        # Amazon 2023 names its reviewer user_id and adds parent_asin; 2014 and 2018 have reviewerID
        return "amazon-2023-json" if '"user_id"' in first or '"parent_asin"' in first else "amazon-json"
    if first.lstrip("\ufeff").startswith("user_id,"):  # the 2023 benchmark CSVs' header
        return "amazon-2023-csv"
    if "::" in first:
        return "ml-1m"
    if "\t" in first:
        return "ml-100k"
    if "," in first:  # Amazon 2014 named its ratings files ratings_<category>.csv, 2018 <category>.csv
        return "amazon-2014-csv" if name.startswith("ratings_") else "amazon-csv"
    raise DataError(f"{path}: cannot tell the format from the name or the first line; pass --format (one of {FORMATS})")


ASIN = re.compile(r"(B[0-9A-Z]{9}|[0-9]{9}[0-9X])")  # an Amazon product id: B + 9, or an ISBN-10
REVIEWER = re.compile(r"A[0-9A-Z]{9,40}")  # an Amazon reviewer id (2023's have 28 characters)


def amazon_layout(path: Path, sample=10_000):
    """The layout of an Amazon ratings CSV from its ids, "item,user" (2018) or "user,item" (2014), when the first
    two columns of its first `sample` lines say it (9 in 10 values shaped as ASINs in one, as reviewer ids in
    the other); None when they do not (ids of another shape)."""
    shares = np.zeros((2, 2))  # [column, (asin, reviewer)]
    n = 0
    with open_text(path) as fh:
        try:
            for line in fh:
                fields = line.strip().split(",")
                if len(fields) < 2:
                    continue
                for c in (0, 1):
                    shares[c] += [bool(ASIN.fullmatch(fields[c])), bool(REVIEWER.fullmatch(fields[c]))]
                n += 1
                if n >= sample:
                    break
        except DAMAGED:  # read_interactions reports it
            pass
    shares /= max(n, 1)
    if shares[0, 0] > 0.9 and shares[1, 1] > 0.9:
        return "item,user"
    if shares[0, 1] > 0.9 and shares[1, 0] > 0.9:
        return "user,item"
    return None


def resolve_amazon_csv(path: Path, fmt: str, forced: bool) -> str:
    """amazon-csv (2018: item,user,...) or amazon-2014-csv (user,item,...), decided by the ids where they tell:
    a --format that the ids contradict is refused (read so, users and items would swap silently); a format
    taken from the file's name gives way to the ids, with a warning."""
    layout = amazon_layout(path)
    wanted = {"item,user": "amazon-csv", "user,item": "amazon-2014-csv"}.get(layout)
    if wanted is None or wanted == fmt:
        return fmt
    if forced:
        raise DataError(
            f"{path}: --format {fmt} reads {EXPECTED[fmt]}, but the file's ids are laid out {layout} "
            f"(ASINs and reviewer ids): pass --format {wanted}"
        )
    log.warning("%s: named like %s, but its ids are laid out %s: reading it as %s", path, fmt, layout, wanted)
    return wanted


def split_parser(sep, order):
    """Parser for delimiter-separated lines; `order` gives the field index of user, item, rating, time."""
    u, i, r, t = order
    width = max(order) + 1

    def parse(line):
        f = line.rstrip("\r\n").split(sep)
        if len(f) < width:
            raise ValueError(f"{len(f)} fields, expected {width}")
        return f[u], f[i], f[r], f[t]

    return parse


def json_parser(keys):
    """Parser for JSON lines holding user, item, rating and time under `keys`."""

    def parse(line):
        d = json.loads(line)
        return tuple(d[k] for k in keys)

    return parse


def json_keys(fmt, item_key="parent_asin"):
    """The keys of user, item, rating and time in a JSON-lines format."""
    if fmt == "amazon-json":
        return ("reviewerID", "asin", "overall", "unixReviewTime")
    return ("user_id", item_key, "rating", "timestamp")


# The delimited formats whose first line is a header naming the columns: the separator, and the names of user,
# item (None: the item key), rating and time.
HEADERS = {
    "recbole": ("\t", ("user_id", "item_id", "rating", "timestamp")),
    "amazon-2023-csv": (",", ("user_id", None, "rating", "timestamp")),
}


def header_order(header: str, path: Path, fmt: str, item_key="parent_asin"):
    """The field index of user, item, rating and time in a file with a header (HEADERS); RecBole's names carry
    a type (user_id:token)."""
    sep, names = HEADERS[fmt]
    names = [item_key if n is None else n for n in names]
    cols = [c.split(":")[0] for c in header.lstrip("\ufeff").rstrip("\r\n").split(sep)]
    missing = [c for c in names if c not in cols]
    if missing:
        raise DataError(f"{path}: the header has no {', '.join(missing)} column (found: {', '.join(cols)})")
    return tuple(cols.index(c) for c in names)


# The separator and the field index of user, item, rating and time of each delimited format (RecBole's from its
# header: header_order).
LAYOUTS = {
    "amazon-csv": (",", (1, 0, 2, 3)),
    "amazon-2014-csv": (",", (0, 1, 2, 3)),
    "ml-100k": ("\t", (0, 1, 2, 3)),
    "ml-1m": ("::", (0, 1, 2, 3)),
    "recbole": ("\t", None),
    "amazon-2023-csv": (",", None),
}


EXPECTED = {
    "amazon-csv": "4 comma-separated fields: item,user,rating,timestamp (Amazon 2018's ratings-only CSV)",
    "amazon-2014-csv": "4 comma-separated fields: user,item,rating,timestamp (Amazon 2014's ratings_*.csv)",
    "amazon-json": "JSON objects with reviewerID, asin, overall, unixReviewTime",
    "amazon-2023-json": "JSON objects with user_id, parent_asin (or --item_key), rating, timestamp (Amazon 2023)",
    "amazon-2023-csv": "a comma-separated header with user_id, parent_asin (or --item_key), rating, timestamp",
    "amazon-2023-parquet": "Parquet columns user_id, parent_asin (or --item_key), rating, timestamp",
    "ml-100k": "4 tab-separated fields: user item rating timestamp",
    "ml-1m": "4 '::'-separated fields: user::item::rating::timestamp",
    "recbole": "a tab-separated header with user_id, item_id, rating, timestamp",
}


class Codes:
    """Maps original string ids to dense int codes in order of first appearance."""

    def __init__(self):
        self.index = {}

    def encode(self, keys):
        idx = self.index
        return np.fromiter((idx.setdefault(k, len(idx)) for k in keys), dtype=np.int64, count=len(keys))

    def names(self):
        return list(self.index)


@dataclass
class Interactions:
    user: np.ndarray  # int64 codes
    item: np.ndarray  # int64 codes
    time: np.ndarray  # int64
    line: np.ndarray  # int64, file order
    user_names: list
    item_names: list
    lines_read: int
    malformed: int
    malformed_examples: list  # line numbers
    rating_filtered: int
    damaged: str | None = None  # what went wrong reading damaged compressed input, if it was
    format: str = ""  # the format the file was read as
    reader: str = "lines"  # which reader read it (read_interactions)
    time_unit: str = ""  # "s", "ms" or "ordinal" (time_unit)


def parse_line(parse, line):
    """(user, item, rating, time) of a line that is not blank, by `parse` (the format's field split); raises one
    of BAD_LINE when the line cannot be used."""
    u, i, r, t = parse(line)
    u, i = as_id(u), as_id(i)
    if not u or not i:
        raise ValueError("empty user or item")
    # Bytes the file's encoding cannot decode (read with errors="replace") matter only where they are used: an id
    # (a rating or a time holding one does not parse). Elsewhere (a review's text) both readers pass them.
    if "\ufffd" in u or "\ufffd" in i:
        raise ValueError("undecodable bytes in an id")
    r, t = float(r), int(float(t))
    if not -(2**63) <= t < 2**63:  # stored as int64: a value beyond it is as unusable as "inf"
        raise OverflowError("timestamp out of range")
    return u, i, r, t
