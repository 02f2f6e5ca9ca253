"""Process set-up: logging, seeds, which process of a distributed run is the main one, and how glibc keeps freed
memory for a training run."""

import ctypes
import logging
import os
import platform
import random

import numpy as np
import torch


def setup_logging(level=logging.INFO):
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True
    )


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def is_main_process():
    """Rank 0 under torchrun/accelerate, or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(trim_mb=1024, mmap_mb=32) -> bool:
    """Let glibc's malloc keep what a training step frees for the next step, rather than hand it back to the
    kernel and fault it in again, page by page, zeroed: by default it returns the free top of its heap beyond
    twice its largest recent mmap-sized block and maps blocks above that size fresh every time, so each step of
    a model re-faults tens of MB (the jemalloc/tcmalloc advice for torch on CPUs, done in-process). At most
    trim_mb of freed memory is kept; blocks above mmap_mb are still mapped and unmapped. Returns whether it was
    applied (glibc only; elsewhere nothing changes). What it saves: benchmarks/README.md, "Freed memory kept for the
    next step"."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_mb << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_mb << 20))
