"""From interactions to what a prepared dataset holds: each user's history and the evaluation rows, by the paper's
leave-one-out protocol (§5.1) or by a split made elsewhere, kept as given (docs/data.md). slmrec/prepare.py writes
what these return."""

import collections
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import id_dtype
from .errors import DataError
from .raw import read_interactions

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")


def split_files(folder: Path) -> list:
    """The one set of <name>.train.<ext>, <name>.valid.<ext>, <name>.test.<ext> in folder (a 2023 benchmark
    folder holds one per category: --train/--valid/--test choose)."""
    if not folder.is_dir():
        raise DataError(f"--split given: {folder} is not a folder; name the files with --train, --valid, --test")
    sets = collections.defaultdict(dict)
    for f in folder.iterdir():
        for k in SPLIT_NAMES:
            if f".{k}." in f.name and f.is_file():
                sets[f.name.split(f".{k}.")[0], f.name.split(f".{k}.")[1]][k] = f
    whole = {key: files for key, files in sets.items() if len(files) == 3}
    if len(whole) != 1:
        found = ", ".join(sorted(f"{a}.*.{b}" for a, b in whole)) or "none"
        raise DataError(
            f"{folder}: expected one set of <name>.train/.valid/.test files, found {found}; name them with "
            f"--train, --valid, --test"
        )
    files = next(iter(whole.values()))
    return [files[k] for k in SPLIT_NAMES]


# ---------------------------------------------------------------- the protocol


def dedupe_earliest(user, item, *order_keys):
    """Index, in input order, of each (user, item) pair's first interaction by order_keys (last key first, as
    np.lexsort: (line, time) is the earliest time, file order breaking ties)."""
    # One key for the pair (codes are below the number of rows, so it fits int64): a sort on one key fewer,
    # which at Clothing's size is most of this function's time.
    pair = user * (int(item.max(initial=-1)) + 1) + item
    order = np.lexsort((*order_keys, pair))
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


@dataclass
class Built:
    """The users' histories made from the raw files, before they are written: what both splits hand _write."""

    items: np.ndarray  # every user's items in order, concatenated (ids 1..|I|)
    offsets: np.ndarray  # int64 [users + 1]
    user_names: list  # original ids by user index
    item_names: list  # original ids by item id - 1
    read: dict  # what reading and the protocol did, for stats.json
    rows: dict  # {"valid"/"test": (users, positions)}: each evaluation row's user and target position
    format: str  # the raw format as read (detected, or decided from the ids: raw.resolve_amazon_csv)
    train_end: np.ndarray | None = None  # a given split's training part of each history


def read_stats(raw) -> dict:
    """What reading a file did, for stats.json."""
    return {
        "lines_read": raw.lines_read,
        "reader": raw.reader,
        "malformed_lines": raw.malformed,
        "malformed_examples": raw.malformed_examples,
        "damaged_input": raw.damaged,
        "ratings_not_above_threshold": raw.rating_filtered,
    }


def histories(user, item, *order_keys):
    """(item ids, offsets, the user codes and item codes kept) of interactions sorted by user and then by
    order_keys (last key first, as np.lexsort): ids 1..|I| in the order of the codes, 0 is padding."""
    order = np.lexsort((*order_keys, user))
    user, item = user[order], item[order]
    user_codes, user_idx = np.unique(user, return_inverse=True)
    item_codes, item_idx = np.unique(item, return_inverse=True)
    items = (item_idx + 1).astype(id_dtype(len(item_codes)))
    offsets = np.zeros(len(user_codes) + 1, np.int64)
    offsets[1:] = np.cumsum(np.bincount(user_idx, minlength=len(user_codes)))
    return items, offsets, user_codes, item_codes, order


def leave_one_out(cfg, source: Path) -> Built:
    """The paper's protocol: ratings above the threshold, each pair's earliest interaction, the k-core, each
    user's history by time; the last item is the test target, the one before the validation target."""
    log.info("reading %s", source)
    raw = read_interactions(source, cfg.format, cfg.rating_threshold, cfg.reader, cfg.item_key)
    kept = dedupe_earliest(raw.user, raw.item, raw.line, raw.time)
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
    del mask
    items, offsets, user_codes, item_codes, _ = histories(user, item, line, time)  # ties in file order
    del user, item, time, line
    n = len(user_codes)
    return Built(
        items,
        offsets,
        [raw.user_names[c] for c in user_codes],
        [raw.item_names[c] for c in item_codes],
        {
            **read_stats(raw),
            "duplicate_pairs_removed": int(duplicates),
            "time_unit": raw.time_unit,
        },
        {"valid": (np.arange(n), np.full(n, -2)), "test": (np.arange(n), np.full(n, -1))},
        raw.format,
    )


def given(cfg) -> Built:
    """A split made elsewhere, its rows kept as they are: each user's history is their training rows by time
    (file order breaking ties), then their validation rows, then their test rows; every validation and test row
    with at least one item before it is an evaluation row. Only a pair's repeats are dropped (a later repeat would
    make a target part of its own history), and the rating filter and k-core only when asked."""
    threshold = -np.inf if cfg.rating_threshold is None else cfg.rating_threshold
    parts = {
        k: read_interactions(Path(getattr(cfg, k)), cfg.format, threshold, cfg.reader, cfg.item_key)
        for k in SPLIT_NAMES
    }
    units = {p.time_unit for p in parts.values()} - {"ordinal"}
    if len(units) > 1:
        raise DataError(
            "the split's files count time in different units ("
            + ", ".join(f"{k}: {p.time_unit}" for k, p in parts.items())
            + "): write them in one"
        )
    # one code space for the three files: users and items by first appearance, train first
    users, items = {}, {}
    cols = {k: [] for k in ("user", "item", "time", "line", "split")}
    for s, (k, p) in enumerate(parts.items()):
        for codes, names, index in ((p.user, p.user_names, users), (p.item, p.item_names, items)):
            remap = np.fromiter((index.setdefault(n, len(index)) for n in names), np.int64, len(names))
            cols["user" if index is users else "item"].append(remap[codes] if len(codes) else codes)
        cols["time"].append(p.time)
        cols["line"].append(p.line)
        cols["split"].append(np.full(len(p.user), s))
    user, item, time, line, split = (np.concatenate(cols[k]) for k in cols)
    kept = dedupe_earliest(user, item, line, time, split)  # a pair's first row in train, valid, test order
    repeats = {k: int(np.sum(split == s) - np.sum(split[kept] == s)) for s, k in enumerate(SPLIT_NAMES)}
    user, item, time, line, split = user[kept], item[kept], time[kept], line[kept], split[kept]
    if cfg.k_core is not None:
        mask = k_core(user, item, cfg.k_core)
        user, item, time, line, split = user[mask], item[mask], time[mask], line[mask], split[mask]
    if not (split == 0).any() or not (split == 2).any():
        raise DataError(f"the split's training or test file has no usable row ({cfg.train}, {cfg.test})")
    ids, offsets, user_codes, item_codes, order = histories(user, item, line, time, split)
    user_names, item_names = list(users), list(items)
    split, line, pos_user = split[order], line[order], np.repeat(np.arange(len(user_codes)), np.diff(offsets))
    position = np.arange(len(split)) - offsets[pos_user]
    train_end = np.bincount(pos_user[split == 0], minlength=len(user_codes)).astype(np.int64)
    rows, without_history, checked = {}, {}, {}
    for s, k in ((1, "valid"), (2, "test")):
        at = (split == s) & (position >= 1)
        without_history[k] = int(np.sum((split == s) & (position == 0)))
        rows[k] = (pos_user[at], position[at])
        checked[k] = _check_history_column(
            Path(getattr(cfg, k)), parts[k], line[at], ids, offsets, rows[k], [item_names[c] for c in item_codes]
        )
    for k in rows:
        if not len(rows[k][0]):
            raise DataError(f"{getattr(cfg, k)}: no {k} row has an item before it to predict from")
    in_train = np.zeros(len(item_codes), bool)
    in_train[ids[split == 0].astype(np.int64) - 1] = True
    per_user = {k: np.bincount(rows[k][0], minlength=len(user_codes)) for k in rows}
    return Built(
        ids,
        offsets,
        [user_names[c] for c in user_codes],
        [item_names[c] for c in item_codes],
        {
            "split_files": {k: str(getattr(cfg, k)) for k in SPLIT_NAMES},
            "split_kind": "last_out" if all(c.max() <= 1 for c in per_user.values()) else "timestamp",
            **{f"{k}_rows": int(len(rows[k][0])) for k in rows},
            **{f"users_in_{k}": int(np.sum(per_user[k] > 0)) for k in rows},
            "rows_without_history": without_history,
            "repeated_pairs_removed": repeats,
            "items_only_in_valid_or_test": int(np.sum(~in_train)),
            "history_column": checked,
            "files": {k: {"format": p.format, **read_stats(p)} for k, p in parts.items()},
            "time_unit": (units or {"ordinal"}).pop(),
        },
        rows,
        parts["train"].format,
        train_end,
    )


def _check_history_column(path, raw, lines, ids, offsets, rows, item_names) -> str:
    """A benchmark file's own `history` column (the 2023 *_w_his files: space-separated items before the row)
    against the history this split gives the row: equal, or its last items where the column was cut short.
    Returns "checked" or "absent"; a row whose column says otherwise is a one-line DataError."""
    if raw.format != "amazon-2023-csv":
        return "absent"
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        header = fh.readline().rstrip("\r\n").split(",")
        if "history" not in header:
            return "absent"
        at, wanted = header.index("history"), dict(zip(lines.tolist(), range(len(lines))))
        for n, line in enumerate(fh, 2):
            r = wanted.get(n)
            if r is None:
                continue
            given = line.rstrip("\r\n").split(",")[at].split() if line.count(",") >= at else []
            u, p = int(rows[0][r]), int(rows[1][r])
            ours = (
                [item_names[i - 1] for i in ids[offsets[u] : offsets[u] + p][-len(given) :].tolist()] if given else []
            )
            if given != ours:
                raise DataError(
                    f"{path} line {n}: its history column ({len(given)} items) is not the items before this row in "
                    f"the split's files ({p} items): the files do not belong together"
                )
    return "checked"
