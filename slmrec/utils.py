"""Small helpers shared by the command-line scripts."""

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import mmap
import os
import platform
import random
import shutil
import socket
import tempfile
import time
import typing
from pathlib import Path

import numpy as np
import torch

from .errors import DamagedFile, FlagError


def setup_logging(level=logging.INFO):
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        force=True)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def jsonable(o):
    return dataclasses.asdict(o) if dataclasses.is_dataclass(o) else str(o)


@contextlib.contextmanager
def written_whole(path, suffix=""):
    """Yields a temporary path to write the file to; when the block ends it replaces `path` by a rename, so a reader
    never sees half a file, and it is removed if the block raises. suffix: an ending the writer insists on
    (np.savez's .npz). A symlink is followed (the file it points to is replaced, the link kept). A target that
    is not a regular file (a device such as /dev/stdout or /dev/null, a named pipe) is never renamed over: the
    whole file is written to it in place once it is complete."""
    path = Path(path)
    in_place = path.exists() and not path.is_file()
    if not in_place and path.is_symlink():
        path = path.resolve()
    if in_place:
        fd, name = tempfile.mkstemp(prefix=".slmrec-", suffix=suffix)
        os.close(fd)
        tmp = Path(name)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        if in_place:
            with open(tmp, "rb") as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cache_dir() -> Path:
    """The project's cache (converted base models, ml-100k): $SLMREC_CACHE, else ~/.cache/slmrec."""
    return Path(os.environ.get("SLMREC_CACHE", Path.home() / ".cache" / "slmrec"))


def save_json(obj, path):
    with written_whole(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=jsonable))


def file_digest(path) -> str:
    """sha256 of a file's content (hex), read in blocks: a large file need not fit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_npz(path, **arrays):
    with written_whole(path, ".npz") as tmp:
        np.savez(tmp, **arrays)


def load_json(path):
    """A JSON file; one that is not (cut short, edited, not UTF-8) is a DamagedFile naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError both are
        raise DamagedFile(f"{path}: damaged, not JSON ({e}); restore it (git checkout -- FILE for a record in the "
                          f"repository), or remove it and make it again") from None


def is_main_process():
    """Rank 0 under torchrun/accelerate, or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def split_flags(flags: dict, *configs, fixed=()) -> list:
    """Share command-line flags out among config dataclasses by field name, each value checked against and
    converted to its field's type, so each default and its validation live in the dataclass alone; a flag no
    dataclass has, one of the `fixed` fields (set by the script, e.g. from the data), or a value of the wrong
    type is an error before any work."""
    given = sorted(set(flags) & set(fixed))
    if given:
        raise FlagError(f"{', '.join('--' + k for k in given)}: set from the data and the model, not a flag")
    hints = [typing.get_type_hints(c) for c in configs]
    names = [{f.name for f in dataclasses.fields(c)} - set(fixed) for c in configs]
    unknown = sorted(set(flags) - set().union(*names))
    if unknown:
        raise FlagError(f"unknown flag(s): {', '.join('--' + k for k in unknown)}; the options are the fields of "
                        + ", ".join(c.__name__ for c in configs))
    return [{k: coerce(k, v, h[k]) for k, v in flags.items() if k in n} for n, h in zip(names, hints)]


TRUE, FALSE = {"true", "yes", "1"}, {"false", "no", "0"}


def coerce(name, value, kind):
    """A flag's value as fire parsed it (fire leaves "false" a string and turns "007" into 7) converted to
    `kind`, a field's type hint (bool, int, float, str, list, or one of them | None); FlagError otherwise."""
    args = typing.get_args(kind)
    if type(None) in args:  # X | None
        if value is None or str(value).lower() == "none":
            return None
        kind = next(a for a in args if a is not type(None))
    kind = typing.get_origin(kind) or kind
    bad = FlagError(f"--{name}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in TRUE | FALSE:
            return str(value).lower() in TRUE
        raise bad
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise bad
        try:
            return int(value)
        except ValueError:
            raise bad from None
    if kind is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if kind is str:
        if isinstance(value, (list, tuple, dict)):
            raise bad
        return str(value)
    if kind is list:
        return [str(v) for v in value] if isinstance(value, (list, tuple)) else \
            [v.strip() for v in str(value).split(",") if v.strip()]
    return value


# Files that mark a folder the project made for a purpose of its own: a checkpoint, a prepared dataset.
PROJECT_FOLDERS = ("slmrec_config.json", "stats.json")


def check_writable(path, flag, reads=()):
    """Before any work: a file can be created at path (path is no folder, and its nearest existing ancestor is
    a writable folder: the missing ones are made when the file is written), and writing it loses nothing: it is
    none of the inputs the command reads (`reads`: files or folders), and no file already inside one of them or
    inside a checkpoint or prepared dataset."""
    path = Path(path)
    if path.is_dir():
        raise FlagError(f"{flag} {path} is a directory, not a file")
    target = path.resolve()
    for r in map(Path, reads):
        if target == r.resolve():
            raise FlagError(f"{flag} {path} is an input of this command ({r}): write somewhere else")
    if target.exists():
        owners = [Path(r).resolve() for r in reads] + [p for p in target.parents
                                                       if any((p / m).is_file() for m in PROJECT_FOLDERS)]
        inside = [o for o in owners if o in target.parents]
        if inside:
            raise FlagError(f"{flag} {path} exists inside {inside[0]}, which this command reads or this project made "
                            f"(a checkpoint or a prepared dataset): write to a new path")
    if path.exists() and not path.is_file():  # a device or a pipe: written in place (written_whole)
        if not os.access(path, os.W_OK):
            raise FlagError(f"{flag} {path}: not writable")
        return
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise FlagError(f"{flag} {path}: cannot write in {parent} (not a writable folder)")


def check_memory(nbytes, what):
    """Refuse, before allocating, what cannot fit in this machine's available memory."""
    try:
        meminfo = Path("/proc/meminfo").read_text().split()
        available = int(meminfo[meminfo.index("MemAvailable:") + 1]) * 1024
    except (OSError, ValueError, IndexError):  # not Linux: no check
        return
    if nbytes > available:
        raise FlagError(f"{what} needs about {nbytes / 1e9:,.1f} GB, more than the {available / 1e9:.1f} GB of memory "
                        f"available")


def empty_huge(shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """An uninitialised tensor, on a CPU in memory asked to be backed by 2 MB pages (madvise; a no-op where the
    kernel's transparent huge pages are off; on another device a plain torch.empty). Random row reads from a
    table larger than the cache (the evaluator gathers 1,000 candidate vectors per user from the item table) then
    miss the TLB far less, and a scratch buffer reused through a pass is faulted in once (benchmarks/README.md,
    "The paper's data scale")."""
    nbytes = max(1, math.prod(shape)) * torch.empty(0, dtype=dtype).element_size()
    if torch.device(device).type != "cpu" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=dtype, device=device)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # shared memory has its own THP switch
    buf.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(buf, dtype=dtype, count=math.prod(shape)).view(shape)


LOCK = ".lock"  # in a run's output folder while the run is alive: {"pid", "host"}


@contextlib.contextmanager
def run_lock(folder):
    """One run per output folder: a second run on a folder in use is refused, naming the first one's process;
    a lock whose process is gone (a killed run) is taken over. Taken by the main process only (DDP ranks share
    the folder), again by the same process without harm (nested), and released at exit."""
    if not is_main_process():
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    holder = _lock_holder(path)
    if holder == me:  # nested: the outer one releases it
        yield
        return
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is not None and holder.get("host") != me["host"]:
                raise FlagError(f"{folder} is in use by a run on {holder.get('host')} (pid {holder.get('pid')}); if "
                                f"that run is gone, remove {path}") from None
            if holder is not None and _alive(holder.get("pid")):
                raise FlagError(f"{folder} is in use by another run (pid {holder['pid']}): wait for it to finish, or "
                                f"choose another output folder") from None
            logging.getLogger(__name__).warning("%s: taking over the lock of a run that is gone (pid %s)", folder,
                                                holder and holder.get("pid"))
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    else:
        raise FlagError(f"{folder}: could not take its lock {path}")
    try:
        yield
    finally:
        if _lock_holder(path) == me:
            path.unlink(missing_ok=True)


def _lock_holder(path):
    try:
        holder = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being written by a run taking it now, or half-written by one killed then
        fresh = time.time() - Path(path).stat().st_mtime < 5
        return {"pid": "unknown (taking it now)", "host": socket.gethostname(), "fresh": True} if fresh else None
    return holder if isinstance(holder, dict) else None


def _alive(pid) -> bool:
    if pid == "unknown (taking it now)":
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def parse_ints(value) -> list:
    """A fire flag given as 4, "1,2,4" or (1, 2, 4) -> [1, 2, 4]."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [int(x) for x in value]
    return [int(x) for x in str(value).strip("()[]").split(",") if x.strip()]


def hardware():
    """The machine, as results tables, figures and benchmarks name it."""
    gpu = _gpu()
    return f"GPU {gpu}" if gpu else f"{_cpu()}, {os.cpu_count()} cores"


def peak_rss_mb() -> float:
    """This process's own peak resident memory, MB. On Linux VmHWM, which starts afresh at exec: getrusage's
    ru_maxrss keeps the largest size before it, so a child started by a 1 GB parent reports at least 1 GB."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:  # not Linux: ru_maxrss (kB here, bytes on macOS) is what there is
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if platform.system() == "Darwin" else peak / 1024
    return int(status.split("VmHWM:", 1)[1].split()[0]) / 1024


def _cpu():
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux: the architecture is all we name
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0] if names else platform.machine()} CPU"


def _gpu():
    return torch.cuda.get_device_name() if torch.cuda.is_available() else ""
