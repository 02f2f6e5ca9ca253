"""Raw interaction files -> Interactions: the formats, their encodings, and the two readers that give the same
result (docs/data.md): Polars' columnar engine for the lines it can read plainly (every line of a
clean file), and the line reader, which counts and names every line that cannot be used.
"""

import codecs
import csv
import gzip
import io
import itertools
import json
import logging
import os
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


def _open_text(path: Path):
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


def _id(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"an id must be a string or an integer, not {type(value).__name__}")
    return str(value).strip()


def _first_line(path: Path) -> str:
    """The file's first line that is not blank ("" if none in its first thousand)."""
    with _open_text(path) as fh:
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
    with _open_text(path) as fh:
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


def _split_parser(sep, order):
    """Parser for delimiter-separated lines; `order` gives the field index of user, item, rating, time."""
    u, i, r, t = order
    width = max(order) + 1

    def parse(line):
        f = line.rstrip("\r\n").split(sep)
        if len(f) < width:
            raise ValueError(f"{len(f)} fields, expected {width}")
        return f[u], f[i], f[r], f[t]

    return parse


def _json_parser(keys):
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


class _Codes:
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


READERS = ("columnar", "lines")


def read_interactions(path, fmt=None, rating_threshold=3.0, reader="columnar", item_key="parent_asin") -> Interactions:
    """Read a raw file, keeping ratings > rating_threshold; malformed lines are counted and skipped. reader
    "columnar": Polars, wherever it gives the line reader's result exactly (read_columnar), else the line reader;
    "lines": the line reader only. item_key: Amazon 2023's item (parent_asin, or asin for the variant)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if reader not in READERS:
        raise DataError(f"unknown reader {reader!r}; choose one of {READERS}")
    forced = fmt is not None
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    if item_key not in ITEM_KEYS:
        raise DataError(f"unknown item key {item_key!r}; choose one of {ITEM_KEYS}")
    if fmt in ("amazon-csv", "amazon-2014-csv"):
        fmt = resolve_amazon_csv(path, fmt, forced)
    if fmt == "amazon-2023-parquet":  # no lines to read one by one: the engine reads it, whichever reader
        raw = read_parquet(path, rating_threshold, item_key)
    else:
        raw = read_columnar(path, fmt, rating_threshold, item_key) if reader == "columnar" else None
    if raw is None:
        raw = read_lines(path, fmt, rating_threshold, item_key)
    if raw.malformed:
        log.warning("%s: skipped %d malformed lines (first: %s)", path, raw.malformed, raw.malformed_examples)
    raw.time_unit = time_unit(raw.time, raw.line, path)
    return raw


# Times from 1e8 (1973 in seconds) are read as a unit: seconds below 1e11 (the year 5138), milliseconds from
# there (1973 in milliseconds). Below 1e8 they are ordinal numbers (1, 2, 3...), which order as well as any.
SECONDS_FROM, MILLISECONDS_FROM = 10**8, 10**11


def time_unit(time, line, path) -> str:
    """The unit of a file's times, "s", "ms" or "ordinal"; a file holding both seconds and milliseconds is a
    one-line DataError naming a line of each (its order by time would put every millisecond after every
    second: Amazon 2014/2018 files count in seconds, 2023's in milliseconds)."""
    ms = time >= MILLISECONDS_FROM
    s = (time >= SECONDS_FROM) & ~ms
    if ms.any() and s.any():
        a, b = int(np.argmax(s)), int(np.argmax(ms))
        raise DataError(
            f"{path}: times in seconds and in milliseconds in one file (line {line[a]}: {time[a]}, line "
            f"{line[b]}: {time[b]}; {int(s.sum())} and {int(ms.sum())} of them): ordered together they would be "
            f"wrong; write them in one unit"
        )
    return "ms" if ms.any() else "s" if s.any() else "ordinal"


def parse_line(parse, line):
    """(user, item, rating, time) of a line that is not blank, by `parse` (the format's field split); raises one
    of BAD_LINE when the line cannot be used."""
    u, i, r, t = parse(line)
    u, i = _id(u), _id(i)
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


def _parser(fmt, fh, path, item_key):
    """The line parser of a format, and how many header lines it read from fh."""
    if fmt in HEADERS:
        return _split_parser(HEADERS[fmt][0], header_order(fh.readline(), path, fmt, item_key)), 1
    if fmt in ("amazon-json", "amazon-2023-json"):
        return _json_parser(json_keys(fmt, item_key)), 0
    return _split_parser(*LAYOUTS[fmt]), 0


def read_lines(path: Path, fmt: str, rating_threshold: float, item_key="parent_asin") -> Interactions:
    """The line reader: a Python pass over the file's lines in its own encoding, plain or gzip, every format; a
    line that cannot be used is counted (the first five by number), damaged compressed input keeps what came
    before it, and a file whose first hundred lines all fail stops at once."""
    users, items = _Codes(), _Codes()
    out = {k: [] for k in ("user", "item", "time", "line")}
    malformed, examples, filtered, n, damaged = 0, [], 0, 0, None
    with _open_text(path) as fh:
        parse, n = _parser(fmt, fh, path, item_key)
        first_line = n + 1
        buf = {k: [] for k in out}
        lines = iter(fh)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                break
            except DAMAGED as e:
                damaged = f"damaged after line {n} ({e}); the {n} lines before are kept"
                log.warning("%s: %s", path, damaged)
                break
            n += 1
            if not line.strip():
                continue
            try:
                u, i, r, t = parse_line(parse, line)
            except BAD_LINE as e:
                malformed += 1
                if len(examples) < 5:
                    examples.append(n)
                # A file whose first hundred lines all fail is the wrong file or the wrong format: stop early.
                if malformed >= 100 and malformed == n - first_line + 1:
                    raise DataError(
                        f"{path}: the first {malformed} lines do not parse as {fmt} ({EXPECTED[fmt]}); "
                        f"line {first_line}: {e}"
                    ) from e
                continue
            if not r > rating_threshold:
                filtered += 1
                continue
            buf["user"].append(u)
            buf["item"].append(i)
            buf["time"].append(t)
            buf["line"].append(n)
            if len(buf["line"]) >= CHUNK_LINES:
                _flush(buf, out, users, items)
        _flush(buf, out, users, items)
    parsed = n - first_line + 1 - malformed
    if parsed <= 0:
        raise DataError(
            f"{path}: no line parses as {fmt} ({EXPECTED[fmt]})"
            + (f"; first bad lines: {examples}" if examples else "; the file is empty")
        )
    cat = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in out.items()}
    return Interactions(
        cat["user"],
        cat["item"],
        cat["time"],
        cat["line"],
        users.names(),
        items.names(),
        n,
        malformed,
        examples,
        filtered,
        damaged,
        fmt,
    )


def _flush(buf, out, users, items):
    if not buf["line"]:
        return
    out["user"].append(users.encode(buf["user"]))
    out["item"].append(items.encode(buf["item"]))
    out["time"].append(np.asarray(buf["time"], dtype=np.int64))
    out["line"].append(np.asarray(buf["line"], dtype=np.int64))
    for v in buf.values():
        v.clear()


# A field the columnar reader parses itself only when the line reader would read it the same way: an id of
# printable ASCII (nothing str.strip() removes, no byte the encoding could not decode), a plain decimal rating
# (both parse it to the nearest double), a whole-second time under 2**53 (so int(float(t)) is t).
PLAIN_ID = r"^[!-~]+$"
PLAIN_RATING = r"^[0-9]{1,9}(\.[0-9]{1,9})?$"
PLAIN_TIME = r"^[0-9]{1,15}$"
# More lines than this that are not plain: the line reader reads the whole file (it is not the engine's kind).
MAX_NOT_PLAIN = 100_000


# An id the JSON engine reads as a string although the line reader would not take it as one (a number, true,
# false, null, a list or an object: the engine writes 5.0 as "5"): such a line is read by the line reader.
JSON_NOT_STRING = r"^([-+0-9.eE]+|true|false|null)$|^[\[{]"


def _line_breaks(path: Path, block=1 << 24):
    """(whether the file has a "\r" not followed by "\n", its number of lines). A lone "\r" is a line break to
    the line reader (universal newlines) and none to the engine, so the two would number the lines differently."""
    lone, lines, last = False, 0, b"\n"
    with open(path, "rb") as fh:
        cr_at_end = False
        while chunk := fh.read(block):
            if cr_at_end and not chunk.startswith(b"\n"):
                lone = True
            cr_at_end = chunk.endswith(b"\r")
            body = chunk[:-1] if cr_at_end else chunk
            if body.count(b"\r") != body.count(b"\r\n"):
                lone = True
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lone or cr_at_end, lines + (last != b"\n")


JSON_BLOCK = 1 << 27  # bytes of JSON lines the engine reads at a time


def _frames(pl, path, fmt, item_key, skip, order, width):
    """The engine's lazy frames of the file's lines, with the expressions of user, item, rating (Float64), time
    (Int64) and whether a line is plain (read exactly as the line reader reads it). One frame for a delimited
    file (a streaming scan); for JSON lines one frame per block of JSON_BLOCK bytes ending at a line's end:
    Polars' JSON scan maps the whole file, whose resident pages alone would pass Clothing's memory bound."""
    if fmt in ("amazon-json", "amazon-2023-json"):
        keys = json_keys(fmt, item_key)
        u, i, r, t = (pl.col(k) for k in keys)
        plain = (
            u.str.contains(PLAIN_ID)
            & i.str.contains(PLAIN_ID)
            & ~u.str.contains(JSON_NOT_STRING)
            & ~i.str.contains(JSON_NOT_STRING)
            & r.is_not_null()
            & r.is_not_nan()  # Polars orders NaN above every rating; Python's comparison is false
            & (t.abs() < 2**53)  # int(float(t)) is t
        )
        schema = dict(zip(keys, (pl.String, pl.String, pl.Float64, pl.Int64)))
        with open(path, "rb") as fh:
            while block := fh.read(JSON_BLOCK):
                block += fh.readline()
                # a value of another type is null (ignore_errors), and its line read again by the line reader
                yield pl.read_ndjson(block, schema=schema, ignore_errors=True).lazy(), u, i, r, t, plain
        return
    sep = LAYOUTS[fmt][0]
    frame = pl.scan_csv(
        path,
        has_header=False,
        separator=sep,
        quote_char=None,
        skip_rows=skip,
        schema={f"f{k}": pl.String for k in range(width)},
        truncate_ragged_lines=True,
        missing_columns="insert",
        encoding="utf8-lossy",
    )
    u, i, r, t = (pl.col(f"f{k}") for k in order)
    plain = u.str.contains(PLAIN_ID) & i.str.contains(PLAIN_ID) & r.str.contains(PLAIN_RATING)
    plain = plain & t.str.contains(PLAIN_TIME)
    yield frame, u, i, r.cast(pl.Float64, strict=False), t.cast(pl.Int64, strict=False), plain


def read_columnar(path: Path, fmt: str, rating_threshold: float, item_key="parent_asin") -> Interactions | None:
    """The line reader's Interactions, read with Polars' streaming engine: the engine splits every line into
    fields and parses the plain ones (PLAIN_*), which is every line of a clean file; the others (blank, short,
    malformed, or merely unusual) are read again by number and parsed by the line reader's own parse_line, so
    counts, line numbers and ids come out the same. None, and the line reader reads the file, where that cannot
    be exact: ml-1m's "::" separator, gzip or not-UTF-8 input (the line reader's decoding and damaged-input
    accounting), a lone "\r", more than MAX_NOT_PLAIN other lines, a file whose first hundred lines or every
    line fail (the line reader's errors), a file the engine refuses, and JSON lines whose lines the engine does
    not number as the line reader does (a blank line, which it skips) or cannot read (a line that is not JSON)."""
    # Polars' allocator (jemalloc) keeps freed pages for its own reuse; preparation goes on in numpy, so have it
    # return them at once (read when Polars loads): at Clothing's shape a third of the memory resident after the read.
    os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
    import polars as pl  # here: only preparation reads raw files, and every script imports this module

    sep, order = LAYOUTS.get(fmt, (None, None))
    json_lines = fmt in ("amazon-json", "amazon-2023-json")
    if not json_lines and (sep is None or len(sep) != 1):
        return None
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if head[:2] == b"\x1f\x8b" or text_encoding(head) != "utf-8":
        return None
    lone_cr, line_count = _line_breaks(path)
    if lone_cr:
        return None
    skip, width = 0, None if json_lines else max(order or (0,)) + 1
    if fmt in HEADERS:  # every column the header names (the engine refuses a first row wider than its schema)
        header = head.split(b"\n", 1)[0].decode("utf-8", "replace")
        order, skip, width = header_order(header, path, fmt, item_key), 1, header.count(HEADERS[fmt][0]) + 1
    first_line = skip + 1
    kept, others, lines_read, filtered = [], [], skip, 0
    try:
        for frame, u, i, r, t, plain in _frames(pl, path, fmt, item_key, skip, order, width):
            rows = frame.with_row_index("line", offset=lines_read + 1).select(
                user=u, item=i, time=t, line=pl.col("line"), plain=plain.fill_null(False), above=r > rating_threshold
            )
            part, odd, counts = pl.collect_all(
                [
                    rows.filter(pl.col("plain") & pl.col("above")).select("user", "item", "time", "line"),
                    rows.filter(~pl.col("plain")).select("line"),
                    rows.select(lines=pl.len(), filtered=(pl.col("plain") & ~pl.col("above")).sum()),
                ],
                engine="streaming",
            )
            kept.append(part)
            others.append(odd["line"].to_numpy())
            lines_read, filtered = lines_read + int(counts["lines"][0]), filtered + int(counts["filtered"][0])
    except pl.exceptions.PolarsError as e:
        log.info("%s: the columnar reader cannot read it (%s); reading it line by line", path, str(e)[:200])
        return None
    kept = (
        pl.concat(kept)
        if kept
        else pl.DataFrame(schema={"user": pl.String, "item": pl.String, "time": pl.Int64, "line": pl.UInt32})
    )
    others = np.sort(np.concatenate(others)) if others else np.zeros(0, np.int64)  # ascending: read forward
    if len(others) > MAX_NOT_PLAIN:
        return None
    if json_lines and lines_read != line_count:  # the engine skipped blank lines: its numbers are not the lines'
        return None
    # The lines that are not plain, parsed as the line reader parses them.
    parse = _json_parser(json_keys(fmt, item_key)) if json_lines else _split_parser(sep, order)
    extra = {"user": [], "item": [], "time": [], "line": []}
    malformed, examples = 0, []
    with open(path, "rb") as fh:
        done = 0  # lines consumed
        for n in others.tolist():
            line = next(itertools.islice(fh, n - done - 1, None)).decode("utf-8", "replace")
            done = n
            if not line.strip():
                continue
            try:
                user, item, rating, time = parse_line(parse, line)
            except BAD_LINE:
                malformed += 1
                if len(examples) < 5:
                    examples.append(n)
                if malformed == 100 and n == first_line + 99:  # the first hundred lines all fail
                    return None
                continue
            if not rating > rating_threshold:
                filtered += 1
                continue
            for k, v in zip(extra, (user, item, time, n)):
                extra[k].append(v)
    if lines_read - first_line + 1 - malformed <= 0:
        return None
    if extra["line"]:
        kept = pl.concat([kept, pl.DataFrame(extra, schema=kept.schema)]).sort("line")
    elif not kept["line"].is_sorted():
        kept = kept.sort("line")
    coded = [_first_appearance_codes(kept[col]) for col in ("user", "item")]
    if None in coded:
        return None
    (user, user_names), (item, item_names) = coded
    return Interactions(
        user,
        item,
        kept["time"].to_numpy().astype(np.int64),
        kept["line"].to_numpy().astype(np.int64),
        user_names,
        item_names,
        lines_read,
        malformed,
        examples,
        filtered,
        None,
        fmt,
        "columnar",
    )


def read_parquet(path: Path, rating_threshold: float, item_key="parent_asin") -> Interactions:
    """Amazon 2023 reviews saved as Parquet (the Hugging Face hub's conversion, or a `datasets` export): the four
    columns read by the engine, a row numbered as a line (its index + 1). A row the line reader would not take
    from the same review as JSON (an id that is not a non-empty string or integer, a rating or time that is
    missing or not a number) is malformed, counted and named, as in the other formats."""
    os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")  # as read_columnar
    import polars as pl

    keys = json_keys("amazon-2023-json", item_key)
    try:
        schema = pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise DataError(f"{path}: not a Parquet file the engine can read ({str(e)[:200]})") from None
    missing = [k for k in keys if k not in schema]
    if missing:
        raise DataError(f"{path}: no {', '.join(missing)} column (found: {', '.join(schema)})")
    ids_ok = [schema[k] == pl.String or schema[k].is_integer() for k in keys[:2]]
    if not all(ids_ok) or not schema[keys[2]].is_numeric() or not schema[keys[3]].is_numeric():
        raise DataError(f"{path}: {', '.join(f'{k} is {schema[k]}' for k in keys)}: not ids, a rating and a time")
    u, i, r, t = (pl.col(k) for k in keys)
    frame = (
        pl.scan_parquet(path)
        .select(keys)
        .with_row_index("line", offset=1)
        .select(
            user=u.cast(pl.String).str.strip_chars(),
            item=i.cast(pl.String).str.strip_chars(),
            rating=r.cast(pl.Float64),
            time=t.cast(pl.Float64),
            line=pl.col("line"),
        )
    )
    ok = (
        (pl.col("user").str.len_chars() > 0)
        & (pl.col("item").str.len_chars() > 0)
        & pl.col("rating").is_not_null()  # a NaN rating is not above the threshold: filtered, as by the line reader
        & pl.col("time").is_finite()
        & (pl.col("time").abs() < 2**63)
    ).fill_null(False)
    above = pl.col("rating").is_not_nan() & (pl.col("rating") > rating_threshold)  # Polars orders NaN above all
    kept, bad, counts = pl.collect_all(
        [
            frame.filter(ok & above).select("user", "item", pl.col("time").cast(pl.Int64), "line"),
            frame.filter(~ok).select("line").head(5),
            frame.select(lines=pl.len(), malformed=(~ok).sum(), filtered=(ok & ~above).sum()),
        ],
        engine="streaming",
    )
    lines, malformed = int(counts["lines"][0]), int(counts["malformed"][0])
    if lines - malformed <= 0:
        raise DataError(f"{path}: no row holds a usable user, item, rating and time ({lines} rows)")
    coded = [_first_appearance_codes(kept[col]) for col in ("user", "item")]
    if None in coded:  # two ids sharing a 64-bit hash: the line reader's coding
        coded = []
        for col in ("user", "item"):
            codes = _Codes()
            coded.append((codes.encode(kept[col].to_list()), codes.names()))
    (user, user_names), (item, item_names) = coded
    return Interactions(
        user,
        item,
        kept["time"].to_numpy().astype(np.int64),
        kept["line"].to_numpy().astype(np.int64),
        user_names,
        item_names,
        lines,
        malformed,
        bad["line"].to_list(),
        int(counts["filtered"][0]),
        None,
        "amazon-2023-parquet",
        "columnar",
    )


def _first_appearance_codes(ids):
    """int64 codes of a string column in order of first appearance, as the line reader's _Codes gives them, and
    the distinct strings in that order; found through 64-bit hashes (at Clothing's shape a join on them is 4x
    faster than a categorical cast of the strings). None when two different strings share a hash."""
    import polars as pl

    h = ids.hash(seed=0)
    first = h.arg_unique()
    table = pl.DataFrame({"h": h.gather(first), "code": pl.int_range(len(first), eager=True, dtype=pl.Int64)})
    codes = pl.DataFrame({"h": h}).join(table, on="h", how="left", maintain_order="left")["code"]
    names = ids.gather(first)
    if not (names.gather(codes) == ids).all():
        return None
    return codes.to_numpy(), names.to_list()


def read_titles(path) -> dict:
    """Item titles from Amazon metadata JSON lines (2014/2018: asin, title; 2023: parent_asin, title) or a RecBole
    .item file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such metadata file")
    titles, bad = {}, 0
    with _open_text(path) as fh:
        try:
            if path.name.endswith(".item"):
                cols = [c.split(":")[0] for c in fh.readline().rstrip("\r\n").split("\t")]
                tcol = next((c for c in ("title", "movie_title") if c in cols), None)
                if "item_id" not in cols or tcol is None:
                    raise DataError(f"{path}: expected item_id and title (or movie_title) columns, found {cols}")
                i, t = cols.index("item_id"), cols.index(tcol)
                for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
                    if len(row) > max(i, t):
                        titles[row[i]] = row[t]
                    else:
                        bad += 1
            else:
                for line in fh:
                    try:
                        d = json.loads(line)
                        titles[_id(d["parent_asin"] if "parent_asin" in d else d["asin"])] = str(d.get("title", ""))
                    except BAD_LINE:
                        bad += 1
        except DAMAGED as e:
            log.warning("%s: damaged after %d titles (%s); keeping those", path, len(titles), e)
    if bad:
        log.warning("%s: skipped %d malformed metadata lines", path, bad)
    return titles
