"""The machine a command runs on: the device it computes on (chosen here, once), its name for records and
benchmarks, peak memory, and allocation that respects the memory there is."""

import importlib.util
import math
import mmap
import os
import platform
import shutil
from pathlib import Path

import torch

from .errors import FlagError


def compute_device() -> str:
    """Where models run: the GPU when torch sees one, else the CPU. Every command asks here, so the choice is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def can_compile(device) -> bool:
    """Whether torch.compile's inductor can build kernels here: C++ on a CPU (a compiler must be installed),
    Triton on a GPU."""
    if torch.device(device).type == "cpu":
        return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++"))
    return importlib.util.find_spec("triton") is not None


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


def check_memory(nbytes, what):
    """Refuse, before allocating, what cannot fit in this machine's available memory."""
    try:
        meminfo = Path("/proc/meminfo").read_text().split()
        available = int(meminfo[meminfo.index("MemAvailable:") + 1]) * 1024
    except (OSError, ValueError, IndexError):  # not Linux: no check
        return
    if nbytes > available:
        raise FlagError(
            f"{what} needs about {nbytes / 1e9:,.1f} GB, more than the {available / 1e9:.1f} GB of memory available"
        )


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
