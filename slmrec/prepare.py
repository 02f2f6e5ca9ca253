"""Writing a prepared dataset: the paper's §5.1 protocol (docs/data.md) on interactions read by
slmrec.raw, the stored candidates, an atomic swap into place; the embedded default (ml-100k) fetched and
prepared on first use; format 1 rewritten as format 2 (convert). slmrec.data reads what this writes."""

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

from .data import FORMAT, PreparedData, Sequences, _sequence_hash, id_dtype, is_prepared, sequence_digest
from .errors import DataError
from .raw import read_interactions, read_titles
from .files import cache_dir, process_alive

log = logging.getLogger(__name__)

RECBOLE_VERSION = "1.2.1"


@dataclass
class PrepareConfig:
    source: str
    format: str | None = None  # detected from the file name / first line when None
    metadata: str | None = None  # Amazon metadata JSON lines or RecBole .item file, for titles
    rating_threshold: float = 3.0  # keep ratings strictly above this
    k_core: int = 5
    num_negatives: int = 999
    seed: int = 42
    reader: str = "columnar"  # "columnar" (Polars, where it reads the file exactly as the line reader) or "lines"


# ---------------------------------------------------------------- the protocol


def dedupe_earliest(user, item, time, line):
    """Index of each (user, item) pair's earliest interaction (file order breaks time ties)."""
    # One key for the pair (codes are below the number of rows, so it fits int64): a sort on three keys instead
    # of four, which at Clothing's size is most of this function's time.
    pair = user * (int(item.max(initial=-1)) + 1) + item
    order = np.lexsort((line, time, pair))
    p = pair[order]
    first = np.ones(len(order), bool)
    first[1:] = p[1:] != p[:-1]
    return np.sort(order[first])


def k_core(user, item, k):
    """Boolean mask of interactions kept after removing users and items with < k interactions, repeated until stable."""
    keep = np.ones(len(user), bool)
    while True:
        uc = np.bincount(user[keep], minlength=user.max(initial=-1) + 1)
        ic = np.bincount(item[keep], minlength=item.max(initial=-1) + 1)
        new = keep & (uc[user] >= k) & (ic[item] >= k)
        if new.sum() == keep.sum():
            return keep
        keep = new


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


def draw_candidates(sequences, num_items, position, num_negatives, rng, writer, block=8192, progress=None):
    """The positive (each user's item at `position`: -2 valid, -1 test), then num_negatives negatives drawn
    uniformly from items outside the user's whole prepared history, 0-padded where fewer exist; written to
    `writer` (NpyRows) a block of users at a time, so memory does not grow with users x candidates. progress:
    called with each block's number of users. Returns the number of users with fewer negatives available."""
    short = 0
    seen = np.zeros(num_items + 1, bool)  # the current user's history, as a lookup (np.isin would sort)
    for lo in range(0, len(sequences), block):
        rows = np.zeros((min(block, len(sequences) - lo), 1 + num_negatives), np.int32)
        for r in range(len(rows)):
            seq = sequences[lo + r]
            rows[r, 0] = seq[position]
            available = num_items - len(seq)
            if available <= num_negatives:
                neg = np.setdiff1d(np.arange(1, num_items + 1), seq)
                short += 1
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
    return short


def _running(leftover: Path) -> bool:
    """A .tmp-/.old- folder of a prepare still running on this machine: its process id is in the name."""
    pid = leftover.name.rsplit(".", 1)[-1].split("-")[1:2]
    return bool(pid) and pid[0].isdigit() and process_alive(int(pid[0]))


def check_output_dir(output_dir: Path, overwrite: bool, source: Path = None):
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
    if source is not None and source.resolve().is_relative_to(output_dir.resolve()):
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
    """Run the paper's §5.1 protocol (docs/data.md) on cfg.source and write a prepared dataset to
    output_dir (new, empty, or a prepared dataset replaced when overwrite)."""
    if cfg.k_core < 1 or cfg.num_negatives < 1:
        raise DataError("k_core and num_negatives must be at least 1")
    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite, None if cfg.source == "ml-100k" else Path(cfg.source))
    source, metadata = Path(cfg.source), cfg.metadata
    if cfg.source == "ml-100k":
        source, item_file = fetch_ml100k()
        metadata = metadata or str(item_file)
    log.info("reading %s", source)
    raw = read_interactions(source, cfg.format, cfg.rating_threshold, cfg.reader)
    kept = dedupe_earliest(raw.user, raw.item, raw.time, raw.line)
    duplicates = len(raw.user) - len(kept)
    user, item, time, line = raw.user[kept], raw.item[kept], raw.time[kept], raw.line[kept]
    mask = k_core(user, item, cfg.k_core)
    # Leave-one-out needs a training item, a validation item and a test item.
    if cfg.k_core < 3:
        counts = np.bincount(user[mask])
        mask &= counts[user] >= 3
    user, item, time, line = user[mask], item[mask], time[mask], line[mask]
    if len(user) == 0:
        raise DataError(
            f"{source}: no user is left after keeping ratings > {cfg.rating_threshold} "
            f"and the {cfg.k_core}-core ({len(raw.user)} interactions passed the rating filter)"
        )
    order = np.lexsort((line, time, user))  # each user's history by time, ties in file order
    user, item = user[order], item[order]
    del time, line, order, mask
    user_codes, user_idx = np.unique(user, return_inverse=True)
    item_codes, item_idx = np.unique(item, return_inverse=True)
    num_items = len(item_codes)
    items = (item_idx + 1).astype(id_dtype(num_items))  # 0 is padding
    offsets = np.zeros(len(user_codes) + 1, np.int64)
    offsets[1:] = np.cumsum(np.bincount(user_idx))
    del user, item, user_idx, item_idx
    sequences = Sequences(items, offsets)
    titles = read_titles(metadata) if metadata else {}
    item_names = [raw.item_names[c] for c in item_codes]
    lengths = np.diff(offsets)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename at the end: an interrupted run leaves no half dataset.
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-{os.getpid()}-", dir=output_dir.parent))
    try:
        np.save(tmp / "sequences.npy", items)
        np.save(tmp / "offsets.npy", offsets)
        # The fingerprint (see fingerprint()) fed as the candidates are drawn: every dataset keeps the fingerprint
        # of format 1, and runs trained on it stay valid.
        h = _sequence_hash(items, offsets)
        histories = h.hexdigest()[:16]
        rng = np.random.default_rng(cfg.seed)
        short = {}
        for split, position in (("valid", -2), ("test", -1)):  # this order: the draws of format 1
            log.info("drawing %s candidates for %d users", split, len(sequences))
            with (
                NpyRows(
                    tmp / f"candidates_{split}.npy", (len(sequences), 1 + cfg.num_negatives), id_dtype(num_items), h
                ) as writer,
                tqdm(
                    total=len(sequences),
                    desc=f"{split} candidates",
                    unit="user",
                    mininterval=2,
                    disable=len(sequences) < 100_000,
                ) as bar,
            ):
                short[split] = draw_candidates(
                    sequences, num_items, position, cfg.num_negatives, rng, writer, progress=bar.update
                )
        stats = {
            "source": str(cfg.source),  # as given: the project cache's path of ml-100k is one machine's
            "users": int(len(user_codes)),
            "items": int(num_items),
            "interactions": int(len(items)),
            "density": float(len(items) / (len(user_codes) * num_items)),
            "avg_sequence_length": float(lengths.mean()),
            "min_sequence_length": int(lengths.min()),
            "max_sequence_length": int(lengths.max()),
            "lines_read": raw.lines_read,
            "reader": raw.reader,
            "malformed_lines": raw.malformed,
            "malformed_examples": raw.malformed_examples,
            "damaged_input": raw.damaged,
            "ratings_not_above_threshold": raw.rating_filtered,
            "duplicate_pairs_removed": int(duplicates),
            "num_negatives": cfg.num_negatives,
            "users_with_fewer_negatives": short,
            "items_with_title": int(sum(n in titles for n in item_names)),
            "format": FORMAT,
            "sequence_digest": histories,
            "fingerprint": h.hexdigest()[:16],
        }
        with open(tmp / "users.tsv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerow(["user_index", "original_id"])
            w.writerows((u, raw.user_names[c]) for u, c in enumerate(user_codes))
        with open(tmp / "items.tsv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerow(["item_id", "original_id", "title"])
            w.writerows((i + 1, n, titles.get(n, "")) for i, n in enumerate(item_names))
        # the format as read (detected, or decided from the ids: resolve_amazon_csv)
        (tmp / "prepare_config.json").write_text(
            json.dumps(dataclasses.asdict(dataclasses.replace(cfg, format=raw.format)), indent=2)
        )
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        _swap_in(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


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
