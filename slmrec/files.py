"""Files the project writes and reads: whole-or-nothing writes, JSON and .npz, digests, the cache folder, the
checks that a write loses nothing, and the one-run-per-folder lock."""

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from .errors import DamagedFile, FlagError
from .runtime import is_main_process


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
        raise DamagedFile(
            f"{path}: damaged, not JSON ({e}); restore it (git checkout -- FILE for a record in the "
            f"repository), or remove it and make it again"
        ) from None


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
        owners = [Path(r).resolve() for r in reads] + [
            p for p in target.parents if any((p / m).is_file() for m in PROJECT_FOLDERS)
        ]
        inside = [o for o in owners if o in target.parents]
        if inside:
            raise FlagError(
                f"{flag} {path} exists inside {inside[0]}, which this command reads or this project made "
                f"(a checkpoint or a prepared dataset): write to a new path"
            )
    if path.exists() and not path.is_file():  # a device or a pipe: written in place (written_whole)
        if not os.access(path, os.W_OK):
            raise FlagError(f"{flag} {path}: not writable")
        return
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise FlagError(f"{flag} {path}: cannot write in {parent} (not a writable folder)")


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
                raise FlagError(
                    f"{folder} is in use by a run on {holder.get('host')} (pid {holder.get('pid')}); if "
                    f"that run is gone, remove {path}"
                ) from None
            if holder is not None and process_alive(holder.get("pid")):
                raise FlagError(
                    f"{folder} is in use by another run (pid {holder['pid']}): wait for it to finish, or "
                    f"choose another output folder"
                ) from None
            logging.getLogger(__name__).warning(
                "%s: taking over the lock of a run that is gone (pid %s)", folder, holder and holder.get("pid")
            )
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


def process_alive(pid) -> bool:
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
