"""Training steps/s and evaluation users/s of an E-LLMRec model (teacher or student), as a table.

    python benchmarks/teacher_speed.py                                   # smollm2-135m, 8 and 4 layers, CPU
    python benchmarks/teacher_speed.py --base_model random:llama-7b --layers 8,4 --dtype bf16   # on a GPU

Synthetic histories of full length (the worst case); random item embeddings; times the same for random
and real weights. Each configuration is timed in the same process, one after another.
"""

import platform
import sys
import time
from pathlib import Path

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from slmrec.backbone import load_backbone  # noqa: E402
from slmrec.model import ELLMRec, ELLMRecConfig  # noqa: E402


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(base_model, layers, dtype, batch_size, eval_batch_size, max_len, num_items, steps, device):
    backbone = load_backbone(base_model, layers, dtype)
    model = ELLMRec(ELLMRecConfig(base_model=base_model, num_layers=layers, max_len=max_len, dtype=dtype),
                    torch.randn(num_items + 1, 64), backbone=backbone).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, num_items + 1, (batch_size, max_len), generator=g).to(device)
    y = torch.randint(1, num_items + 1, (batch_size,), generator=g).to(device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16" and device == "cuda")
    times = []
    for i in range(steps + 2):  # two warm-up steps
        _sync()
        t = time.perf_counter()
        with autocast:
            loss = model(x, y)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
        _sync()
        times.append(time.perf_counter() - t)
    step_s = sorted(times[2:])[len(times[2:]) // 2]
    model.eval()
    xe = torch.randint(1, num_items + 1, (eval_batch_size, max_len), generator=g).to(device)
    with torch.no_grad(), autocast:
        model.score(xe)
        _sync()
        t = time.perf_counter()
        reps = max(1, steps // 2)
        for _ in range(reps):
            model.score(xe)
        _sync()
        eval_s = (time.perf_counter() - t) / reps
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return step_s, eval_batch_size / eval_s, trainable, total


def main(base_model="smollm2-135m", layers="8,4", dtype="auto", batch_size=16, eval_batch_size=64, max_len=50,
         num_items=1008, steps=6):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layers = [layers] if isinstance(layers, int) else [int(x) for x in str(layers).strip("()[]").split(",")]
    hw = torch.cuda.get_device_name() if device == "cuda" else f"CPU {platform.processor() or platform.machine()}, " \
                                                                 f"{torch.get_num_threads()} threads"
    print(f"{base_model}, dtype {dtype}, batch {batch_size} (eval {eval_batch_size}), history {max_len}, "
          f"{num_items} items, median of {steps} steps, {hw}")
    print("| layers | train step s | train steps/s | eval users/s | trainable params | params in model |")
    print("|---|---|---|---|---|---|")
    rows = []
    for n in layers:
        step_s, users_s, trainable, total = measure(base_model, n, dtype, batch_size, eval_batch_size, max_len,
                                                    num_items, steps, device)
        rows.append((n, step_s, users_s))
        print(f"| {n} | {step_s:.3f} | {1 / step_s:.2f} | {users_s:.1f} | {trainable:,} | {total:,} |", flush=True)
    if len(rows) > 1:
        base = rows[0]
        for n, s, u in rows[1:]:
            print(f"{n} vs {base[0]} layers: training {base[1] / s:.2f}x faster per step, "
                  f"inference {u / base[2]:.2f}x more users/s")


if __name__ == "__main__":
    fire.Fire(main)
