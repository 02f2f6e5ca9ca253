"""Reading a prepared leave-one-out dataset (paper §5.1; slmrec/prepare.py writes it) and checking it against its
fingerprint.

A prepared dataset is a directory (format 2; every array an uncompressed .npy, read memory-mapped):

    sequences.npy            all users' histories concatenated, item ids in the smallest unsigned type that holds them
    offsets.npy              int64 [users + 1]: where each user's history starts
    candidates_valid.npy     [users, 1 + negatives], same type: column 0 is the positive, 0 marks "no candidate"
    candidates_test.npy      for users with fewer negatives available
    users.tsv                user index -> original user id
    items.tsv                item id (1..|I|) -> original item id, title
    prepare_config.json      the options used
    stats.json               users, items, interactions, density, ... and the content fingerprint

A dataset of a split made elsewhere (prepare_data.py --split given) has besides, and its candidate tables have a row
per evaluation row rather than per user:

    train_end.npy            int64 [users]: each user's history holds its training rows first, then validation, test
    eval_valid.npy           int64 [rows, 2]: (user, position) of each validation row: its target is the user's item
    eval_test.npy            at that position, its history the items before it

Format 1 (sequences.npz, candidates.npz) still opens; `prepare_data.py --convert DIR` rewrites it as format 2 with
the same fingerprint.
"""

import csv
import functools
import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from .errors import DataError
from .formats import text_lines

log = logging.getLogger(__name__)


def id_dtype(num_items):
    """The smallest unsigned type that holds item ids 0..num_items."""
    return np.dtype(np.uint16 if num_items < 2**16 else np.uint32)


class Sequences:
    """Every user's history as a view of one array (no per-user objects): s[u], len(s), iteration."""

    def __init__(self, items, offsets):
        self.items, self.offsets = items, offsets

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, u):
        return self.items[self.offsets[u] : self.offsets[u + 1]]

    def __iter__(self):
        return (self[u] for u in range(len(self)))


def is_prepared(path: Path) -> bool:
    return (path / "stats.json").is_file() and any((path / f).is_file() for f in ("sequences.npy", "sequences.npz"))


def _update(h, array, dtype, block_bytes=1 << 24):
    """Feed h the array's values as `dtype`, a block of rows at a time (a memory-mapped table is never whole)."""
    step = max(1, block_bytes // max(1, array[:1].nbytes))
    for lo in range(0, len(array), step):
        h.update(np.ascontiguousarray(array[lo : lo + step], dtype).tobytes())


def _sequence_hash(items, offsets):
    """sha256 fed the histories as the fingerprint reads them: the ids as int32, the offsets as int64."""
    h = hashlib.sha256()
    _update(h, items, np.int32)
    _update(h, offsets, np.int64)
    return h


def sequence_digest(items, offsets) -> str:
    """The histories' digest (the fingerprint's first part): checked whenever a dataset opens."""
    return _sequence_hash(items, offsets).hexdigest()[:16]


def split_hash(h, split_arrays):
    """Feed h a given split's arrays (train_end, eval_valid, eval_test) as int64; nothing for leave-one-out."""
    for array in split_arrays:
        _update(h, array, np.int64)
    return h


def fingerprint(items, offsets, valid, test, split_arrays=()) -> str:
    """The dataset's content fingerprint: sha256 of the ids as int32, the offsets as int64, both candidate
    tables as int32, whatever types they are stored in (prepare() feeds the same hash as it draws), and a given
    split's arrays."""
    h = _sequence_hash(items, offsets)
    _update(h, valid, np.int32)
    _update(h, test, np.int32)
    return split_hash(h, split_arrays).hexdigest()[:16]


def split_digest(split_arrays) -> str:
    """A given split's arrays' digest: checked whenever the dataset opens, with the histories'."""
    return split_hash(hashlib.sha256(), split_arrays).hexdigest()[:16]


SPLIT_FILES = ("train_end.npy", "eval_valid.npy", "eval_test.npy")


FORMAT = 2
# Candidate tables up to this size are checked against the fingerprint at every open (ml-100k's in milliseconds);
# larger ones are checked on request (PreparedData.verify, prepare_data.py --verify), the histories always.
VERIFY_BYTES = 256 << 20


def read_table(path) -> list:
    """The rows of a .tsv the project wrote (items.tsv, users.tsv), header left out."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing; prepare the dataset again with prepare_data.py")
    # csv's own quoting, as prepare() writes them: an id or title holding a tab, a quote or a newline round-trips.
    lines = text_lines(path)
    try:
        return list(csv.reader((line for _, line in lines), delimiter="\t"))[1:]
    except csv.Error as e:  # a carriage return left unquoted (datasets prepared before prepare.write_tsv)
        raise DataError(
            f"{path}: cannot be read as a tab-separated table ({e}); prepare the dataset again with prepare_data.py"
        ) from None


def read_items(path, num_items) -> tuple:
    """items.tsv as (original ids, titles), lists indexed by item id 1..|I| (entry 0, padding, is empty); a file
    that does not name each item 1..num_items once (edited, or another dataset's) is a DataError."""
    ids, titles = [""] * (num_items + 1), [""] * (num_items + 1)
    rows = read_table(path)
    for n, r in enumerate(rows, 2):
        if len(r) < 2 or not r[0].isdigit() or not 1 <= int(r[0]) <= num_items or ids[int(r[0])]:
            raise DataError(f"{path} line {n}: not an item id in 1..{num_items} named once, with its original id")
        ids[int(r[0])], titles[int(r[0])] = r[1], r[2] if len(r) > 2 else ""
    if len(rows) != num_items:
        raise DataError(f"{path} names {len(rows)} items, the dataset has {num_items} (edited or corrupt)")
    return ids, titles


class Catalog:
    """The items alone (ids and titles from an items.tsv), for scoring histories without a dataset's users: what
    an exported model ships (slmrec/export.py), and what a prepared dataset (PreparedData) has besides its users
    and histories. A request naming a dataset user needs the prepared dataset."""

    def __init__(self, folder, num_items, fingerprint=""):
        self.path, self.num_items, self.fingerprint = Path(folder), num_items, fingerprint

    @functools.cached_property
    def catalog(self) -> tuple:
        """(original ids, titles), read once."""
        return read_items(self.path / "items.tsv", self.num_items)

    @functools.cached_property
    def item_index(self) -> dict:
        """{original item id: item index 1..|I|}, read once."""
        return {orig: i for i, orig in enumerate(self.catalog[0]) if i}

    @property
    def user_index(self) -> dict:
        raise DataError(f"{self.path} holds no users: a request naming a user needs the prepared dataset (--data)")


class PreparedData(Catalog):
    """A prepared dataset: user histories plus the fixed evaluation candidates, memory-mapped (format 2): opening
    reads the small files and maps the arrays, and a page of a table is read only when it is used."""

    def __init__(self, path):
        self.path = Path(path)
        self.format = (
            1 if (self.path / "sequences.npz").is_file() and not (self.path / "sequences.npy").is_file() else FORMAT
        )
        arrays = (
            ("sequences.npz", "candidates.npz")
            if self.format == 1
            else ("sequences.npy", "offsets.npy", "candidates_valid.npy", "candidates_test.npy")
        )
        missing = [f for f in (*arrays, "stats.json", "items.tsv") if not (self.path / f).is_file()]
        if not missing:
            self.stats = self._read_stats()
            if self.stats.get("split") == "given":  # a split made elsewhere has its rows' arrays besides
                arrays = (*arrays, *SPLIT_FILES)
                missing = [f for f in SPLIT_FILES if not (self.path / f).is_file()]
        if missing:
            raise DataError(
                f"{self.path} is not a prepared dataset (missing {', '.join(missing)}); run prepare_data.py first"
            )
        name, self.split_arrays = "stats.json", ()
        try:
            self.num_items, self.fingerprint = int(self.stats["items"]), self.stats["fingerprint"]
            if self.format == 1:
                log.info(
                    "%s: format 1 (.npz, read whole into memory); `prepare_data.py --convert %s` rewrites it "
                    "memory-mapped, same fingerprint",
                    self.path,
                    self.path,
                )
                name = "sequences.npz"
                with np.load(self.path / name) as z:
                    items, offsets = z["items"], z["offsets"]
                name = "candidates.npz"
                with np.load(self.path / name) as z:
                    self.candidates = {"valid": z["valid"], "test": z["test"]}
            else:
                loaded = []
                for name in arrays:
                    loaded.append(np.load(self.path / name, mmap_mode="r", allow_pickle=False))
                items, offsets, valid, test = loaded[:4]
                self.split_arrays = tuple(np.asarray(a) for a in loaded[4:])
                # The histories as plain arrays over the map: a user's history, a slice, is then a plain array
                # view (100 bytes) rather than a memmap object (500 bytes: 0.5 GB more for a pass over 1 M users).
                items, offsets = np.asarray(items), np.asarray(offsets)
                self.candidates = {"valid": valid, "test": test}
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(
                f"{self.path / name}: damaged or incomplete ({type(e).__name__}: {e}); prepare the "
                f"dataset again: prepare_data.py --output_dir {self.path} --overwrite"
            ) from e
        self.sequences = Sequences(items, offsets)
        self.num_users = len(self.sequences)
        self.given = bool(self.split_arrays)
        self._check_shapes(items, offsets)
        self._check_counts(items)
        tables = sum(c.nbytes for c in self.candidates.values())
        if self.format == 1 or tables <= VERIFY_BYTES:
            self.verify()
        elif sequence_digest(items, offsets) != self.stats.get("sequence_digest") or (
            self.given and split_digest(self.split_arrays) != self.stats.get("split_digest")
        ):
            raise DataError(f"{self.path}: the histories do not match stats.json (edited or corrupt)")
        else:
            log.info(
                "%s: histories checked; the %.1f GB of candidates are checked by prepare_data.py --verify",
                self.path,
                tables / 1e9,
            )

    def _read_stats(self) -> dict:
        path = self.path / "stats.json"
        try:
            stats = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            stats = e
        if not isinstance(stats, dict):
            raise DataError(
                f"{path}: damaged or incomplete ({stats!r:.100}); prepare the dataset again: prepare_data.py "
                f"--output_dir {self.path} --overwrite"
            )
        return stats

    def _check_shapes(self, items, offsets):
        rows = {split: c.shape for split, c in self.candidates.items()}
        if self.given:
            train_end, *evals = self.split_arrays
            lengths = np.diff(offsets) if offsets.ndim == 1 else None
            fits = lengths is not None and train_end.shape == lengths.shape and (train_end <= lengths).all()
            for table, rows_ in zip(self.candidates.values(), evals):
                fits = fits and rows_.ndim == 2 and rows_.shape[1] == 2 and len(rows_) == len(table)
                fits = fits and ((rows_[:, 0] >= 0) & (rows_[:, 0] < len(lengths))).all()
                fits = fits and ((rows_[:, 1] >= 1) & (rows_[:, 1] < lengths[rows_[:, 0]])).all()
            if not fits:
                rows = {"": (0,)}  # reported below
            self.eval_rows = dict(zip(("valid", "test"), evals)) if fits else {}
        if (
            offsets.ndim != 1
            or len(offsets) < 2
            or offsets[-1] != len(items)
            or any(len(r) != 2 or (not self.given and r[0] != self.num_users) for r in rows.values())
        ):
            raise DataError(
                f"{self.path}: the arrays do not fit together (edited or corrupt); prepare the dataset "
                f"again: prepare_data.py --output_dir {self.path} --overwrite"
            )

    def _check_counts(self, items):
        """stats.json's counts against the arrays: the catalogue is the items the histories hold, so an edited
        item count (which would shift every id past it) is caught here, not by a crash or a wrong answer."""
        actual = {"users": self.num_users, "items": int(items.max(initial=0)), "interactions": len(items)}
        for k, v in actual.items():
            if self.stats.get(k) != v:
                raise DataError(
                    f"{self.path / 'stats.json'} says {k} = {self.stats.get(k)!r}, the arrays hold {v} (edited or "
                    f"corrupt); prepare the dataset again: prepare_data.py --output_dir {self.path} --overwrite"
                )

    def candidate_rows(self, split, users) -> np.ndarray:
        """int64 [len(users), 1 + negatives]: the split's stored candidates of these users. Read from the file
        (one pread per run of consecutive users), not through the memory map: a pass over every user would
        otherwise leave the whole table resident (4.3 GB at Clothing's shape)."""
        table, users = self.candidates[split], np.asarray(users, np.int64)
        if not isinstance(table, np.memmap):  # read whole, and checked against the fingerprint at open
            return np.asarray(table[users], np.int64)
        row = table.shape[1] * table.itemsize
        out = np.empty((len(users), table.shape[1]), np.int64)
        starts = np.flatnonzero(np.diff(users, prepend=-2) != 1)
        with open(table.filename, "rb") as fh:
            for lo, hi in zip(starts, [*starts[1:], len(users)]):
                raw = os.pread(fh.fileno(), (hi - lo) * row, table.offset + int(users[lo]) * row)
                block = np.frombuffer(raw, table.dtype).reshape(hi - lo, -1)
                # A table too large to check at open is checked as it is read (on the stored type, before
                # widening): an id past the catalogue would index past the scores.
                if block.max(initial=0) > self.num_items:
                    self._past_the_catalogue(split, users[lo:hi], block)
                out[lo:hi] = block
        return out

    def _past_the_catalogue(self, split, users, rows):
        r = int(np.argmax(rows.max(1) > self.num_items))
        raise DataError(
            f"{self.path}/candidates_{split}.npy row {users[r]}: item {rows[r].max()} is past the catalogue's "
            f"{self.num_items} items (edited or corrupt); prepare_data.py --verify {self.path} checks every array"
        )

    def verify(self):
        """Every array against the fingerprint in stats.json (a full read)."""
        s, c = self.sequences, self.candidates
        if fingerprint(s.items, s.offsets, c["valid"], c["test"], self.split_arrays) != self.fingerprint:
            raise DataError(f"{self.path}: the files do not match the fingerprint in stats.json (edited or corrupt)")

    def train_part(self, u):
        """User u's training items: all but the last two (leave-one-out), the training rows (a given split)."""
        return self.sequences[u][: self.split_arrays[0][u]] if self.given else self.sequences[u][:-2]

    def num_rows(self, split) -> int:
        """The split's evaluation rows: one per user (leave-one-out), the split file's rows (a given split)."""
        return len(self.eval_rows[split]) if self.given else self.num_users

    def _row(self, r, split):
        """(user, position of the target in the user's history) of the split's row r."""
        if self.given:
            u, p = self.eval_rows[split][r]
            return int(u), int(p)
        return int(r), -2 if split == "valid" else -1

    def history(self, r, split):
        """What the model sees before predicting the split's row r (leave-one-out: user r)."""
        u, p = self._row(r, split)
        return self.sequences[u][:p]

    def target(self, r, split):
        u, p = self._row(r, split)
        return int(self.sequences[u][p])

    def seen(self, r, split):
        """The items left out of row r's full ranking (its target excepted): the user's whole history under
        leave-one-out (the paper's protocol), the items before the target in a given split (what the user had
        seen by then: a later row of a time split is not known at that time)."""
        u, p = self._row(r, split)
        return self.sequences[u] if not self.given else self.sequences[u][:p]

    def _table(self, name):
        return read_table(self.path / name)

    def items(self):
        """(original ids, titles), lists indexed by item id 1..|I| (entry 0, padding, is empty)."""
        return read_items(self.path / "items.tsv", self.num_items)

    def users(self):
        """Original user ids, a list indexed by user index."""
        users = [r[1] for r in self._table("users.tsv")]
        if len(users) != self.num_users:
            raise DataError(f"{self.path / 'users.tsv'} names {len(users)} users, the dataset has {self.num_users}")
        return users

    @functools.cached_property
    def user_index(self) -> dict:
        """{original user id: user index}, read once."""
        return {orig: u for u, orig in enumerate(self.users())}
