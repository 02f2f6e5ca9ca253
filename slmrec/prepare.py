"""Preparing a dataset (docs/data.md): the options and their checks, the histories and evaluation rows that
slmrec.splits makes (the paper's §5.1 protocol, or a split made elsewhere), the stored candidates drawn as they
are written, an atomic swap into place; the embedded default (ml-100k) fetched and prepared on first use; format
1 rewritten as format 2 (convert). slmrec.data reads what this writes."""

import collections
import csv
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .data import (
    FORMAT,
    SPLIT_FILES,
    PreparedData,
    Sequences,
    _sequence_hash,
    id_dtype,
    is_prepared,
    sequence_digest,
    split_digest,
    split_hash,
)
from .errors import DataError
from .raw import read_titles
from .splits import SPLIT_NAMES, Built, given, leave_one_out, split_files
from .files import cache_dir, process_alive

log = logging.getLogger(__name__)

RECBOLE_VERSION = "1.2.1"


SPLITS = ("leave-one-out", "given")


@dataclass
class PrepareConfig:
    source: str  # a ratings file, "ml-100k", or (split "given") a folder holding <name>.{train,valid,test}.<ext>
    format: str | None = None  # detected from the file name / first line when None
    metadata: str | None = None  # Amazon metadata JSON lines or RecBole .item file, for titles
    rating_threshold: float | None = None  # keep ratings strictly above it; None: 3.0 (§5.1), no filter if "given"
    k_core: int | None = None  # None: 5 (§5.1); for a "given" split no k-core
    num_negatives: int = 999
    seed: int = 42
    reader: str = "columnar"  # "columnar" (Polars, where it reads the file exactly as the line reader) or "lines"
    item_key: str = "parent_asin"  # Amazon 2023's item: the product (its benchmark's item), or "asin", the variant
    split: str = "leave-one-out"  # or "given": train/valid/test files made elsewhere, their rows kept as they are
    train: str | None = None  # a given split's three files, when not found in the source folder
    valid: str | None = None
    test: str | None = None


def resolve(cfg: PrepareConfig) -> PrepareConfig:
    """cfg with its defaults made concrete and checked, before any work: the protocol's filters (none for a given
    split unless asked) and a given split's three files (named, or the one set in the source folder)."""
    if cfg.split not in SPLITS:
        raise DataError(f"--split must be one of {SPLITS}, not {cfg.split!r}")
    named = [k for k in SPLIT_NAMES if getattr(cfg, k)]
    if cfg.split == "leave-one-out":
        if named:
            raise DataError(f"--{named[0]} names a split's file: it goes with --split given")
        cfg = dataclasses.replace(
            cfg,
            rating_threshold=3.0 if cfg.rating_threshold is None else cfg.rating_threshold,
            k_core=5 if cfg.k_core is None else cfg.k_core,
        )
    elif named and len(named) < 3:
        raise DataError(f"--split given takes all three of --train, --valid, --test (got {', '.join(named)})")
    elif not named:
        cfg = dataclasses.replace(cfg, **dict(zip(SPLIT_NAMES, map(str, split_files(Path(cfg.source))))))
    if (cfg.k_core is not None and cfg.k_core < 1) or cfg.num_negatives < 1:
        raise DataError("k_core and num_negatives must be at least 1")
    return cfg


class NpyRows:
    """A 2-D .npy file written a block of rows at a time (its shape known in advance), so that an array larger
    than memory can be written without holding it; also feeds its rows as int32 to a hash (the fingerprint's).
    A block is hashed and written by a thread while the caller makes the next one (at Clothing's shape a split's
    4.3 GB of candidates go to disk at ~0.3 GB/s, half as long as their draws take), at most two blocks behind;
    so a block must not change after write()."""

    def __init__(self, path, shape, dtype, hasher=None):
        self.dtype, self.hasher, self.rows, self.shape = np.dtype(dtype), hasher, 0, shape
        self.fh = open(path, "wb")
        np.lib.format.write_array_header_1_0(
            self.fh, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        )
        self.pool, self.pending = ThreadPoolExecutor(max_workers=1), collections.deque()

    def write(self, block):
        self.pending.append(self.pool.submit(self._write, block))
        self.rows += len(block)
        while len(self.pending) > 2:
            self.pending.popleft().result()  # the thread's error (a full disk) raised here

    def _write(self, block):
        if self.hasher is not None:
            self.hasher.update(np.ascontiguousarray(block, np.int32))
        self.fh.write(np.ascontiguousarray(block, self.dtype))

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        self.pool.shutdown(wait=True, cancel_futures=kind is not None)  # the file is closed after its last write
        self.fh.close()
        if kind is None:
            for done in self.pending:
                done.result()
            if self.rows != self.shape[0]:
                raise RuntimeError(f"{self.fh.name}: wrote {self.rows} rows of {self.shape[0]}")


def draw_candidates(sequences, num_items, users, positions, num_negatives, rng, writer, block=8192, progress=None):
    """For each evaluation row (a user and the position of its target: -2 valid, -1 test under leave-one-out), the
    positive, then num_negatives negatives drawn uniformly from items outside the user's whole prepared history,
    0-padded where fewer exist; written to `writer` (NpyRows) a block of rows at a time, so memory does not grow
    with rows x candidates. progress: called with each block's number of rows. Returns the number of rows with
    fewer negatives available and the number with none (their positive ranks first whatever the model)."""
    short = none = 0
    seen = np.zeros(num_items + 1, bool)  # the current user's history, as a lookup (np.isin would sort)
    for lo in range(0, len(users), block):
        rows = np.zeros((min(block, len(users) - lo), 1 + num_negatives), np.int32)
        for r in range(len(rows)):
            seq = sequences[users[lo + r]]
            rows[r, 0] = seq[positions[lo + r]]
            available = num_items - len(seq)
            if available <= num_negatives:
                neg = np.setdiff1d(np.arange(1, num_items + 1), seq)
                short += 1
                none += len(neg) == 0
            else:
                # A random ordered sample, minus the history, keeps a uniform subset of the complement.
                draw = rng.choice(num_items, size=num_negatives + len(seq), replace=False) + 1
                seen[seq] = True
                neg = draw[~seen[draw]][:num_negatives]
                seen[seq] = False
            rows[r, 1 : 1 + len(neg)] = neg
        writer.write(rows)
        if progress is not None:
            progress(len(rows))
    return short, none


def _running(leftover: Path) -> bool:
    """A .tmp-/.old- folder of a prepare still running on this machine: its process id is in the name."""
    pid = leftover.name.rsplit(".", 1)[-1].split("-")[1:2]
    return bool(pid) and pid[0].isdigit() and process_alive(int(pid[0]))


def check_output_dir(output_dir: Path, overwrite: bool, sources=()):
    """Before any work: output_dir must be new, empty, or a prepared dataset to replace with overwrite. Leftovers
    of a run killed mid-replacement are put right first (the old dataset back if the new one never arrived)."""
    parent = output_dir.parent
    # Another prepare into the same folder that is running now owns its own: only a dead run's are put right.
    leftovers = lambda kind: [p for p in sorted(parent.glob(f".{output_dir.name}.{kind}-*")) if not _running(p)]  # noqa: E731
    olds = leftovers("old") if parent.is_dir() else []
    if olds and not output_dir.exists():
        log.warning("restoring %s from %s, left by an interrupted replacement", output_dir, olds[-1])
        os.replace(olds[-1], output_dir)
    if parent.is_dir():
        for leftover in [*leftovers("tmp"), *leftovers("old")]:
            shutil.rmtree(leftover, ignore_errors=True)
    for source in sources:
        if source.resolve().is_relative_to(output_dir.resolve()):
            raise DataError(f"--output_dir {output_dir} holds the source {source}: choose another output directory")
    if not output_dir.exists() or (output_dir.is_dir() and not any(output_dir.iterdir())):
        return
    if not output_dir.is_dir() or not is_prepared(output_dir):
        raise DataError(
            f"--output_dir {output_dir} exists and is not a prepared dataset: nothing there is "
            f"replaced; choose a new or empty directory"
        )
    if not overwrite:
        raise DataError(
            f"--output_dir {output_dir} already holds a prepared dataset; pass --overwrite to replace "
            f"it (the old one stays until the new one is complete)"
        )


def prepare(cfg: PrepareConfig, output_dir, overwrite=False) -> dict:
    """Run the paper's §5.1 protocol (docs/data.md) on cfg.source, or keep a split made elsewhere (split
    "given"), and write a prepared dataset to output_dir (new, empty, or a prepared dataset replaced when
    overwrite)."""
    cfg = resolve(cfg)
    output_dir = Path(output_dir)
    sources = [Path(getattr(cfg, k)) for k in SPLIT_NAMES] if cfg.split == "given" else []
    if cfg.source != "ml-100k" and cfg.source:
        sources.append(Path(cfg.source))
    check_output_dir(output_dir, overwrite, sources)
    source, metadata = Path(cfg.source), cfg.metadata
    if cfg.source == "ml-100k":
        source, item_file = fetch_ml100k()
        metadata = metadata or str(item_file)
    built = given(cfg) if cfg.split == "given" else leave_one_out(cfg, source)
    titles = read_titles(metadata) if metadata else {}
    return _write(built, cfg, titles, output_dir)


def _write(built: Built, cfg: PrepareConfig, titles: dict, output_dir: Path) -> dict:
    """The prepared dataset's files, written beside output_dir and renamed into place at the end (an
    interrupted run leaves no half dataset); the candidates drawn as they are written."""
    items, offsets, num_items = built.items, built.offsets, len(built.item_names)
    sequences = Sequences(items, offsets)
    lengths = np.diff(offsets)
    split_arrays = ()
    if built.train_end is not None:
        split_arrays = (built.train_end, *(np.stack(built.rows[k], 1).astype(np.int64) for k in ("valid", "test")))
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-{os.getpid()}-", dir=output_dir.parent))
    try:
        np.save(tmp / "sequences.npy", items)
        np.save(tmp / "offsets.npy", offsets)
        for name, array in zip(SPLIT_FILES, split_arrays):
            np.save(tmp / name, array)
        # The fingerprint (see fingerprint()) fed as the candidates are drawn: every dataset keeps the fingerprint
        # of format 1, and runs trained on it stay valid.
        h = _sequence_hash(items, offsets)
        histories = h.hexdigest()[:16]
        rng = np.random.default_rng(cfg.seed)
        short, none = {}, {}
        for split in ("valid", "test"):  # this order: the draws of format 1
            users, positions = built.rows[split]
            log.info("drawing %s candidates for %d rows", split, len(users))
            with (
                NpyRows(
                    tmp / f"candidates_{split}.npy", (len(users), 1 + cfg.num_negatives), id_dtype(num_items), h
                ) as writer,
                tqdm(
                    total=len(users),
                    desc=f"{split} candidates",
                    unit="row",
                    mininterval=2,
                    disable=len(users) < 100_000,
                ) as bar,
            ):
                short[split], none[split] = draw_candidates(
                    sequences, num_items, users, positions, cfg.num_negatives, rng, writer, progress=bar.update
                )
            if none[split] == len(users):
                raise DataError(
                    f"every {split} row's user has seen every other item: no row has a negative candidate, so any "
                    f"model would rank every target first; this data cannot evaluate a recommender"
                )
            if none[split]:
                log.warning(
                    "%d of %d %s rows have no negative candidate (their users have seen every other item): they "
                    "rank first whatever the model",
                    none[split],
                    len(users),
                    split,
                )
        split_hash(h, split_arrays)
        stats = {
            "source": str(cfg.source),  # as given: the project cache's path of ml-100k is one machine's
            "split": cfg.split,
            "users": int(len(built.user_names)),
            "items": int(num_items),
            "interactions": int(len(items)),
            "density": float(len(items) / (len(built.user_names) * num_items)),
            "avg_sequence_length": float(lengths.mean()),
            "min_sequence_length": int(lengths.min()),
            "max_sequence_length": int(lengths.max()),
            **built.read,
            "num_negatives": cfg.num_negatives,
            "users_with_fewer_negatives": short,
            "rows_without_negatives": none,
            "items_with_title": int(sum(n in titles for n in built.item_names)),
            "format": FORMAT,
            "sequence_digest": histories,
            **({"split_digest": split_digest(split_arrays)} if split_arrays else {}),
            "fingerprint": h.hexdigest()[:16],
        }
        write_tsv(tmp / "users.tsv", ["user_index", "original_id"], enumerate(built.user_names))
        write_tsv(
            tmp / "items.tsv",
            ["item_id", "original_id", "title"],
            ((i + 1, n, titles.get(n, "")) for i, n in enumerate(built.item_names)),
        )
        # the options as used: defaults made concrete, the format as read
        (tmp / "prepare_config.json").write_text(
            json.dumps(dataclasses.asdict(dataclasses.replace(cfg, format=built.format)), indent=2)
        )
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        _swap_in(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def write_tsv(path, header, rows):
    """A tab-separated file in csv's quoting, as data.read_table reads it back. A row with a field holding a
    carriage return (a JSON id may) is quoted whole: csv quotes a line break only when it is in the line
    terminator, and an unquoted one would end the row when read."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        plain = csv.writer(fh, delimiter="\t", lineterminator="\n")
        quoted = csv.writer(fh, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_ALL)
        plain.writerow(header)
        for row in rows:
            (quoted if any("\r" in x for x in row if isinstance(x, str)) else plain).writerow(row)


def _swap_in(tmp: Path, output_dir: Path):
    """Replace output_dir by tmp by renames: the old dataset is whole until the new one is in place
    (check_output_dir restores it if a kill falls between the two renames)."""
    old = output_dir.parent / f".{output_dir.name}.old-{os.getpid()}-{tmp.name.rsplit('-', 1)[-1]}"
    if output_dir.exists():
        os.replace(output_dir, old)
    os.replace(tmp, output_dir)
    shutil.rmtree(old, ignore_errors=True)


def fetch_ml100k():
    """MovieLens-100K from the recbole wheel on PyPI (nothing else is reachable here); cached. Returns (.inter,
    .item) paths."""
    dest = cache_dir() / "ml-100k"
    inter, item = dest / "ml-100k.inter", dest / "ml-100k.item"
    if inter.is_file() and item.is_file():
        return inter, item
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            f"recbole=={RECBOLE_VERSION}",
            "-d",
            tmp,
        ]
        log.info("fetching ml-100k: %s", " ".join(cmd))
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if res.returncode != 0 or not wheels:
            raise DataError(f"could not download the recbole wheel that ships ml-100k:\n{res.stderr.strip()}")
        with zipfile.ZipFile(wheels[0]) as z:
            for f in (inter, item):
                f.write_bytes(z.read(f"recbole/dataset_example/ml-100k/{f.name}"))
    return inter, item


DEFAULT_DATA = "data/ml-100k"  # the embedded default dataset, prepared on first use by the scripts that default to it


def default_prepared(path) -> "PreparedData":
    """The dataset at path; the embedded default (ml-100k) is prepared there first if it is missing."""
    if str(path) == DEFAULT_DATA and not is_prepared(Path(path)):
        log.info("preparing the embedded default dataset (ml-100k) in %s", path)
        prepare(PrepareConfig("ml-100k"), path)
    return PreparedData(path)


def convert(path):
    """Rewrite a format-1 dataset (.npz) as format 2 (.npy, memory-mapped) in place, checked against its
    fingerprint before the old files go; returns its stats."""
    data = PreparedData(path)
    if data.format == FORMAT:
        log.info("%s is already format %d", path, FORMAT)
        return data.stats
    path, s = Path(path), data.sequences
    dtype = id_dtype(data.num_items)
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=path) as tmp:
        tmp = Path(tmp)
        np.save(tmp / "sequences.npy", s.items.astype(dtype))
        np.save(tmp / "offsets.npy", s.offsets)
        for split, table in data.candidates.items():
            np.save(tmp / f"candidates_{split}.npy", table.astype(dtype))
        stats = {**data.stats, "format": FORMAT, "sequence_digest": sequence_digest(s.items, s.offsets)}
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
        # sequences.npy last: until it arrives the folder still opens as format 1
        for f in sorted(tmp.iterdir(), key=lambda f: f.name == "sequences.npy"):
            os.replace(f, path / f.name)
    converted = PreparedData(path)
    converted.verify()
    for f in ("sequences.npz", "candidates.npz"):
        (path / f).unlink()
    return stats
