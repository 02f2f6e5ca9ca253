"""The precision a run computes in, decided in one place: bf16 autocast where it is the faster precision here,
fp32 elsewhere, or what --precision asks."""

import functools
import hashlib
import time
from pathlib import Path

import torch

from .errors import FlagError

from .files import cache_dir, load_json, save_json


@functools.lru_cache(maxsize=None)
def native_bf16() -> bool:
    """Whether bf16 autocast is the faster precision here: a GPU with bf16, or a CPU whose bf16 matrix products
    measure faster than its fp32 ones. CPU flags alone mislead: an Intel Xeon whose AMX a hypervisor hides lists
    AVX512-BF16 yet multiplies slower in bf16 than in fp32, where a Zen 5 multiplies faster (docs/timings.md).
    The measurement is kept in the project cache per CPU and torch version, so every run on a machine decides
    alike (a resumed or compared run never flips precision on timing noise)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to ask, stay in fp32
        return False
    flags = info.split()
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        return False
    return cpu_measurement("bf16_over_fp32", _bf16_speedup, info) >= BF16_MIN_SPEEDUP


def cpu_measurement(name, measure, info=None):
    """measure() timed once per CPU model, flags and torch version and kept in the project cache under `name`,
    so every run on a machine decides alike; None off Linux (no cheap way to name the CPU)."""
    if info is None:
        try:
            info = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    head, flags = info.split("\n\n")[0], info.split()
    key = hashlib.sha256(f"{head.split('flags')[0]}{sorted(set(flags))}{torch.__version__}".encode()).hexdigest()[:16]
    path = cache_dir() / "cpu_speed.json"
    known = load_json(path) if path.is_file() else {}
    entry = known.setdefault(key, {"cpu": _cpu_name(head), "torch": torch.__version__})
    if name not in entry:
        entry[name] = measure()
        save_json(known, path)
    return entry[name]


BF16_MIN_SPEEDUP = 1.2  # bf16 must be clearly faster: it also rounds


def _cpu_name(head):
    return next((line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("model name")), "")


def _bf16_speedup(reps=20) -> float:
    """fp32 time over bf16 time of a matrix product of an LM layer's shape (SmolLM2's MLP, 800 rows)."""
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(800, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
        for _ in range(3):
            a @ b
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        times[dtype] = time.perf_counter() - t
    return times[torch.float32] / times[torch.bfloat16]


def resolve_precision(precision: str) -> str:
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise FlagError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


def compute_dtype(precision: str):
    """The torch dtype autocast computes in for a precision (None: fp32, no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(precision))
