"""Raw interaction files -> Interactions: read_interactions chooses the reader (slmrec/columnar.py where it is
exact, else the line reader here, which counts and names every line that cannot be used), checks the unit of the
times, and item titles are read from metadata (docs/data.md)."""

import csv
import json
import logging
from pathlib import Path

import numpy as np

from .columnar import read_columnar, read_parquet
from .errors import DataError
from .formats import (
    BAD_LINE,
    CHUNK_LINES,
    DAMAGED,
    EXPECTED,
    FORMATS,
    HEADERS,
    ITEM_KEYS,
    LAYOUTS,
    Codes,
    Interactions,
    as_id,
    detect_format,
    header_order,
    json_keys,
    json_parser,
    open_text,
    parse_line,
    resolve_amazon_csv,
    split_parser,
)

log = logging.getLogger(__name__)

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


def _parser(fmt, fh, path, item_key):
    """The line parser of a format, and how many header lines it read from fh."""
    if fmt in HEADERS:
        return split_parser(HEADERS[fmt][0], header_order(fh.readline(), path, fmt, item_key)), 1
    if fmt in ("amazon-json", "amazon-2023-json"):
        return json_parser(json_keys(fmt, item_key)), 0
    return split_parser(*LAYOUTS[fmt]), 0


def read_lines(path: Path, fmt: str, rating_threshold: float, item_key="parent_asin") -> Interactions:
    """The line reader: a Python pass over the file's lines in its own encoding, plain or gzip, every format; a
    line that cannot be used is counted (the first five by number), damaged compressed input keeps what came
    before it, and a file whose first hundred lines all fail stops at once."""
    users, items = Codes(), Codes()
    out = {k: [] for k in ("user", "item", "time", "line")}
    malformed, examples, filtered, n, damaged = 0, [], 0, 0, None
    with open_text(path) as fh:
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


def read_titles(path) -> dict:
    """Item titles from Amazon metadata JSON lines (2014/2018: asin, title; 2023: parent_asin, title) or a RecBole
    .item file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such metadata file")
    titles, bad = {}, 0
    with open_text(path) as fh:
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
                        titles[as_id(d["parent_asin"] if "parent_asin" in d else d["asin"])] = str(d.get("title", ""))
                    except BAD_LINE:
                        bad += 1
        except DAMAGED as e:
            log.warning("%s: damaged after %d titles (%s); keeping those", path, len(titles), e)
    if bad:
        log.warning("%s: skipped %d malformed metadata lines", path, bad)
    return titles
