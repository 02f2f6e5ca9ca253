"""The columnar reader: Polars' engine reads a ratings file wherever it gives the line reader's Interactions
exactly (the plain lines; the others read again by number and parsed by the line reader's own code), and the
Parquet files only it can read (docs/data.md, "Two readers, one result")."""

import itertools
import logging
import os
from pathlib import Path

import numpy as np

from .errors import DataError
from .formats import (
    BAD_LINE,
    HEADERS,
    LAYOUTS,
    Codes,
    Interactions,
    header_order,
    json_keys,
    json_parser,
    parse_line,
    split_parser,
    text_encoding,
)

log = logging.getLogger(__name__)

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
    parse = json_parser(json_keys(fmt, item_key)) if json_lines else split_parser(sep, order)
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
    return _interactions(kept, lines_read, malformed, examples, filtered, fmt)


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
    args = (kept, lines, malformed, bad["line"].to_list(), int(counts["filtered"][0]), "amazon-2023-parquet")
    return _interactions(*args) or _interactions(*args, by_hash=False)


def _interactions(kept, lines_read, malformed, examples, filtered, fmt, by_hash=True) -> Interactions | None:
    """The engine's kept rows (user, item, time, line, in line order) as Interactions, ids coded in order of
    first appearance: by their hashes (None if two ids share one), or by the line reader's coding."""
    if by_hash:
        coded = [_first_appearance_codes(kept[col]) for col in ("user", "item")]
        if None in coded:
            return None
    else:
        coded = []
        for col in ("user", "item"):
            codes = Codes()
            coded.append((codes.encode(kept[col].to_list()), codes.names()))
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


def _first_appearance_codes(ids):
    """int64 codes of a string column in order of first appearance, as the line reader's Codes gives them, and
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
