"""The frozen teacher's states, computed once per distillation setting and read back at every step.

In offline KD the teacher never changes and runs in eval mode (no dropout), so its states for a training
example are a function of that example alone; with a fixed example set (every-position windows, or every
target of last_target) they are the same every epoch. Running the teacher again at every distillation step
then costs a teacher forward pass per step for nothing: here it runs once over the example set, and the
states the loss needs (the B aligned block states at the supervised rows, and the final state for logit KD)
go to disk, memory-mapped, in the compute dtype. A step reads its examples' rows by index.

A cache lives in a folder named by a digest of everything its states depend on (cache_key): the teacher's
weights, its base LM, the dataset, the examples, the aligned layers, the rows kept, the precision and the
torch version. A changed input gives another folder, so stale states can never be read; a folder whose
recorded key, file sizes or offsets do not match is rebuilt. What the build wrote is checked when it is read
back: each example's rows against their CRC-32 (checks.npy), so states changed on disk (overwritten, zeroed,
a NaN) stop training with an error naming the cache rather than training a student on them; the teacher's own
states are checked finite as they are built.
"""

import hashlib
import json
import logging
import os
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbone import SMOLLM2, smollm2_path
from .checkpoints import MODEL_CONFIG, WEIGHTS
from .errors import DataError, NonFiniteError
from .files import file_digest, load_json, save_json

log = logging.getLogger(__name__)

FORMAT = 2  # bump when the layout of the files changes (2: checks.npy, the offsets' digest)
# numpy has no bf16: bf16 states are stored as their raw 16 bits
STORAGE = {
    torch.float32: ("float32", np.float32),
    torch.bfloat16: ("bfloat16", np.int16),
    torch.float16: ("float16", np.float16),
}


def dtype_named(name):
    """The torch dtype of a STORAGE name (as cache keys record it)."""
    return next(t for t, (n, _) in STORAGE.items() if n == name)


def base_model_identity(base_model: str) -> dict:
    """The teacher's frozen LM: a random preset by name, a file or folder by its files' names, sizes and
    modification times (hashing a 13 GB LLaMA directory at every start would cost minutes)."""
    if base_model.startswith("random:"):
        return {"base_model": base_model}
    path = smollm2_path() if base_model == SMOLLM2 else Path(base_model)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {"base_model": base_model, "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def examples_digest(examples) -> str:
    """What the training examples hold, in order (histories and targets)."""
    h = hashlib.sha256()
    for i in range(len(examples)):
        ex = examples[i]
        h.update(ex["input_ids"].numpy().tobytes())
        h.update(ex["labels"].numpy().tobytes())
    return h.hexdigest()


def cache_key(teacher_dir, teacher, data, examples, teacher_layers, rows, with_final, dtype) -> dict:
    """Everything the cached states depend on. rows: "all" supervised rows or the "final" (readout) one per
    example; with_final: also the final state after the norm (logit KD)."""
    teacher_dir = Path(teacher_dir)
    return {
        "format": FORMAT,
        "teacher_weights": file_digest(teacher_dir / WEIGHTS),
        "teacher_config": file_digest(teacher_dir / MODEL_CONFIG),
        "base_model": base_model_identity(teacher.cfg.base_model),
        "data_fingerprint": data.fingerprint,
        "examples": {"type": type(examples).__name__, "count": len(examples), "digest": examples_digest(examples)},
        "teacher_layers": list(teacher_layers),
        "rows": rows,
        "with_final": with_final,
        "dtype": STORAGE[dtype][0],
        "torch": torch.__version__,
    }


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def rows_per_example(example, readout, rows) -> int:
    """How many rows ELLMRec.supervised gives one example: one per target (every_position: each nonzero
    label, and the response marker's when it is the readout), or one when only the final row is kept."""
    labels = example["labels"]
    if rows == "final" or labels.dim() == 0:
        return 1
    return int((labels != 0).sum()) + (readout == "response")


def array_digest(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def example_checks(states, final, offsets, lo, hi) -> np.ndarray:
    """uint32 [hi - lo]: the CRC-32 of each example's rows (its states, then its final states), examples lo..hi
    of a cache whose rows states[offsets[lo]:] (and final's) hold."""
    base, out = offsets[lo], np.empty(hi - lo, np.uint32)
    for k, i in enumerate(range(lo, hi)):
        a, b = offsets[i] - base, offsets[i + 1] - base
        crc = zlib.crc32(np.ascontiguousarray(states[a:b]))
        out[k] = zlib.crc32(np.ascontiguousarray(final[a:b]), crc) if final is not None else crc
    return out


class TeacherStates:
    """A built cache, memory-mapped. rows(index) gives the states of a batch of example indices, in the order
    ELLMRec.supervised gives them for that batch (example by example, position by position), each example's
    rows checked against the CRC-32 recorded when they were written."""

    def __init__(self, path):
        self.path = Path(path)
        self.meta = load_json(self.path / "meta.json")
        self.offsets = np.load(self.path / "offsets.npy", allow_pickle=False)
        self.checks = np.load(self.path / "checks.npy", allow_pickle=False)
        total, B, d = self.meta["total_rows"], len(self.meta["key"]["teacher_layers"]), self.meta["hidden_size"]
        name = self.meta["key"]["dtype"]
        self.dtype = dtype_named(name)
        np_type = STORAGE[self.dtype][1]
        self.states = np.memmap(self.path / "states.bin", np_type, "r", shape=(total, B, d))
        self.final = (
            np.memmap(self.path / "final.bin", np_type, "r", shape=(total, d))
            if self.meta["key"]["with_final"]
            else None
        )

    def _tensor(self, array):
        t = torch.from_numpy(np.ascontiguousarray(array))
        return (t.view(torch.bfloat16) if self.dtype == torch.bfloat16 else t).float()

    def rows(self, index, device="cpu") -> dict:
        """{"states": [B tensors [n, d]] (one per aligned teacher layer), "final": [n, d] or None, "final_only":
        whether the rows are each example's final (readout) row alone}, in fp32."""
        index = np.asarray(index)
        take = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in index.tolist()])
        raw_states = self.states[take]
        raw_final = self.final[take] if self.final is not None else None
        starts = np.concatenate([[0], np.cumsum(self.offsets[index + 1] - self.offsets[index])])  # in the batch's rows
        bad = np.flatnonzero(example_checks(raw_states, raw_final, starts, 0, len(index)) != self.checks[index])
        if len(bad):
            raise DataError(
                f"teacher state cache {self.path}: the states of example {index[bad[0]]} do not match the checksum "
                f"written with them (changed on disk since it was built): delete the folder and it is built again"
            )
        states = self._tensor(raw_states).to(device)
        return {
            "states": list(states.unbind(1)),
            "final": self._tensor(raw_final).to(device) if raw_final is not None else None,
            "final_only": self.meta["key"]["rows"] == "final",
        }


def _complete(path: Path, key: dict) -> bool:
    """A cache folder whose recorded key is this one and whose files have their full sizes."""
    try:
        meta = load_json(path / "meta.json")
    except (OSError, ValueError):
        return False
    if meta.get("key") != key:
        return False
    try:
        offsets, checks = (np.load(path / f, allow_pickle=False) for f in ("offsets.npy", "checks.npy"))
    except (OSError, ValueError):
        return False
    if array_digest(offsets) != meta.get("offsets_digest") or array_digest(checks) != meta.get("checks_digest"):
        log.warning("teacher states: %s has offsets or checksums other than it was built with", path)
        return False
    return all(
        (path / f).is_file() and (path / f).stat().st_size == n
        for f, n in file_sizes(key, meta["total_rows"], meta["hidden_size"]).items()
    )


def file_sizes(key, total_rows, hidden_size) -> dict:
    """{file: bytes} of a complete cache for key: the B aligned states of every row, and the final state of
    every row for logit KD."""
    item = np.dtype(STORAGE[dtype_named(key["dtype"])][1]).itemsize
    row = hidden_size * item
    return {
        "states.bin": total_rows * len(key["teacher_layers"]) * row,
        **({"final.bin": total_rows * row} if key["with_final"] else {}),
    }


def row_offsets(examples, readout, rows) -> np.ndarray:
    """[len(examples) + 1]: where each example's rows start in the cache, and the total at the end."""
    counts = np.fromiter(
        (rows_per_example(examples[i], readout, rows) for i in range(len(examples))), np.int64, count=len(examples)
    )
    return np.concatenate([[0], np.cumsum(counts)])


@torch.no_grad()
def build(path, key, teacher, examples, offsets, autocast, batch_size=64, device="cpu"):
    """Run the teacher once over the examples, in order, and write their states (see TeacherStates) and each
    example's checksum; offsets: row_offsets of the examples. States that are not finite stop the build: the
    teacher itself is broken."""
    path = Path(path)
    rows = key["rows"]
    total, d = int(offsets[-1]), teacher.lm.config.hidden_size
    dtype = dtype_named(key["dtype"])
    np_type = STORAGE[dtype][1]
    layers = key["teacher_layers"]
    states = np.memmap(path / "states.bin", np_type, "w+", shape=(total, len(layers), d))
    final = np.memmap(path / "final.bin", np_type, "w+", shape=(total, d)) if key["with_final"] else None

    def store(t):
        t = t.to(dtype)
        return (t.view(torch.int16) if dtype == torch.bfloat16 else t).cpu().numpy()

    checks = np.empty(len(examples), np.uint32)
    teacher.eval()
    start = 0
    for lo in tqdm(range(0, len(examples), batch_size), desc="teacher states", unit="batch"):
        batch = [examples[i] for i in range(lo, min(lo + batch_size, len(examples)))]
        x = torch.stack([b["input_ids"] for b in batch]).to(device)
        y = torch.stack([b["labels"] for b in batch]).to(device)
        with autocast:
            out = teacher.supervised(x, y, layer_states=True)
        keep = out["final"] if rows == "final" else slice(None)
        block = torch.stack([out["states"][t - 1][keep] for t in layers], 1)
        end = start + block.shape[0]
        if end != offsets[lo + len(batch)]:
            raise RuntimeError(
                f"teacher cache: batch at example {lo} gave {block.shape[0]} rows, expected "
                f"{offsets[lo + len(batch)] - start}"
            )
        if not torch.isfinite(block).all() or (final is not None and not torch.isfinite(out["h"][keep]).all()):
            raise NonFiniteError(
                f"teacher state cache: the teacher gives states that are not finite for examples {lo}.."
                f"{lo + len(batch) - 1}: the teacher checkpoint is broken; retrain or choose another"
            )
        states[start:end] = store(block)
        if final is not None:
            final[start:end] = store(out["h"][keep])
        hi = lo + len(batch)
        checks[lo:hi] = example_checks(
            states[start:end], final[start:end] if final is not None else None, offsets, lo, hi
        )
        start = end
    states.flush()
    if final is not None:
        final.flush()
    np.save(path / "offsets.npy", offsets)
    np.save(path / "checks.npy", checks)
    return total, d, array_digest(offsets), array_digest(checks)


def load_or_build(
    cache_root, key, teacher, examples, autocast, batch_size=64, device="cpu", max_bytes=None
) -> TeacherStates | None:
    """The cache for key under cache_root: read if complete, else built (into a temporary folder renamed into
    place, so a killed build leaves nothing that could be read). None, with the reason logged, when a cache to
    build would be larger than max_bytes or than the free disk under cache_root (less 1 GB)."""
    path = Path(cache_root) / key_digest(key)
    if _complete(path, key):
        log.info("teacher states: reading %s", path)
        return TeacherStates(path)
    offsets = row_offsets(examples, teacher.cfg.readout, key["rows"])
    size = sum(file_sizes(key, int(offsets[-1]), teacher.lm.config.hidden_size).values())
    existing = next((p for p in [Path(cache_root), *Path(cache_root).parents] if p.exists()), Path("."))
    free = shutil.disk_usage(existing).free - (1 << 30)
    log.info(
        "teacher states: %d rows, %.2f GB to build under %s (%.1f GB free)",
        offsets[-1],
        size / 1e9,
        cache_root,
        free / 1e9,
    )
    if (max_bytes is not None and size > max_bytes) or size > free:
        log.warning(
            "teacher states: live teacher instead of a %.1f GB cache (over %s)",
            size / 1e9,
            f"--state_cache_max_gb {max_bytes / 1e9:g}"
            if max_bytes is not None and size > max_bytes
            else f"the {free / 1e9:.1f} GB free under {existing}",
        )
        return None
    if path.exists():
        log.warning("teacher states: %s is incomplete or was made for other inputs: rebuilding it", path)
        shutil.rmtree(path)
    tmp = Path(cache_root) / f".tmp-{os.getpid()}-{key_digest(key)}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t = time.time()
    try:
        total, d, offsets_digest, checks_digest = build(
            tmp, key, teacher, examples, offsets, autocast, batch_size, device
        )
        seconds = time.time() - t
        meta = {"key": key, "total_rows": total, "hidden_size": d, "build_seconds": seconds}
        save_json({**meta, "offsets_digest": offsets_digest, "checks_digest": checks_digest}, tmp / "meta.json")
    except BaseException:  # a full disk, a file-size limit, Ctrl-C: no partial cache is left for later runs
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(path)
    except OSError:  # another process (a DDP rank) finished the same cache first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not _complete(path, key):
            raise
    size = sum(f.stat().st_size for f in path.iterdir())
    log.info("teacher states: built %s in %.0fs, %d rows, %.0f MB", path, seconds, total, size / 1e6)
    return TeacherStates(path)
