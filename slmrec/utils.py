"""Small helpers shared by the command-line scripts."""

import dataclasses
import json
import logging
import os
import platform
import random
from pathlib import Path

import numpy as np
import torch


def setup_logging(level=logging.INFO):
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        force=True)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _jsonable(o):
    return dataclasses.asdict(o) if dataclasses.is_dataclass(o) else str(o)


def save_json(obj, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, default=_jsonable))


def load_json(path):
    return json.loads(Path(path).read_text())


def is_main_process():
    """Rank 0 under torchrun/accelerate, or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def split_flags(flags: dict, *configs) -> list:
    """Share command-line flags out among config dataclasses by field name, so each default lives in its
    dataclass alone; a flag no dataclass has is an error before any work."""
    names = [{f.name for f in dataclasses.fields(c)} for c in configs]
    unknown = sorted(set(flags) - set().union(*names))
    if unknown:
        raise ValueError(f"unknown flag(s): {', '.join('--' + k for k in unknown)}; the options are the fields of "
                         + ", ".join(c.__name__ for c in configs))
    return [{k: v for k, v in flags.items() if k in n} for n in names]


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


def _cpu():
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux: the architecture is all we name
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0] if names else platform.machine()} CPU"


def _gpu():
    return torch.cuda.get_device_name() if torch.cuda.is_available() else ""
