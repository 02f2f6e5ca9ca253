"""How this project times things (Table 5 and every benchmark): one timer, and one measured matmul rate to set
a speed beside (its "floor": the time the layers' matrix products alone take at this machine's own rate)."""

import statistics
import time

import torch
import torch.nn.functional as F

from .backbone import decoder_layers


def sync():
    """Wait for queued GPU work, so a timer reads the work's end (a no-op on a CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seconds(fn, repeats=5, warmup=1, stat="median") -> float:
    """Seconds one call of fn takes: `warmup` untimed calls, then the median of `repeats` timed ones (stat="min":
    the least disturbed by other work on the machine; "mean": an epoch's rate)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return {"median": statistics.median, "min": min, "mean": statistics.fmean}[stat](times)


def linear_shapes(model) -> list:
    """(out, in) of every linear weight in an E-LLMRec's decoder layers (LoRA's low-rank pair left out)."""
    return [
        tuple(m.weight.shape)
        for layer in decoder_layers(model.base_lm())
        for name, m in layer.named_modules()
        if isinstance(m, torch.nn.Linear) and "lora_" not in name
    ]


def matmul_rate(shapes, tokens, dtype=torch.float32, device="cpu", repeats=3) -> float:
    """FLOP/s of x [tokens, in] @ W [in, out] over `shapes` ((out, in) each) on this machine, in dtype: the
    rate a step's matrix products could reach here, best of `repeats` passes."""
    ws = {s: torch.randn(s, device=device).to(dtype) for s in set(shapes)}
    xs = {s: torch.randn(tokens, s[1], device=device).to(dtype) for s in set(shapes)}

    def all_shapes():
        for s in shapes:
            F.linear(xs[s], ws[s])

    with torch.inference_mode():
        best = seconds(all_shapes, repeats, warmup=1, stat="min")
    return sum(2 * tokens * o * i for o, i in shapes) / best
