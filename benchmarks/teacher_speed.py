"""Training steps/s and evaluation users/s of an E-LLMRec model (teacher or student), as a table.

    python benchmarks/teacher_speed.py                                   # smollm2-135m, 8 and 4 layers, CPU
    python benchmarks/teacher_speed.py --base_model random:llama-7b --layers 8,4 --dtype bf16   # on a GPU

Synthetic histories of full length (the worst case); random item embeddings; times the same for random
and real weights. Each configuration is timed in the same process, one after another.
"""

import tempfile

import torch

from slmrec.cli import run
from slmrec.backbone import load_backbone
from slmrec.distill import DistillConfig
from slmrec.efficiency import autocast_for, train_step
from slmrec.losses import block_pairs
from slmrec.teacher_cache import STORAGE, load_or_build
from slmrec.model import ELLMRec, ELLMRecConfig
from slmrec.precision import compute_dtype, resolve_precision
from slmrec.flags import parse_ints
from slmrec.machine import compute_device, hardware
from slmrec.timing import seconds


def build(base_model, layers, dtype, max_len, table, device):
    backbone = load_backbone(base_model, layers, dtype)
    cfg = ELLMRecConfig(base_model=base_model, num_layers=layers, max_len=max_len, dtype=dtype)
    return ELLMRec(cfg, table, backbone=backbone).to(device)


def main(
    base_model="smollm2-135m",
    layers="8,4",
    dtype="auto",
    precision="auto",
    batch_size=16,
    eval_batch_size=64,
    max_len=50,
    num_items=1008,
    steps=6,
    objective="every_position",
):
    """dtype: the weights' (auto: bf16 on a GPU, fp32 on a CPU); precision: the autocast of training.py
    (auto: bf16 where the hardware has it); objective: every_position (a target at every position) or
    last_target (one per example)."""
    device = compute_device()
    layers = parse_ints(layers)
    print(
        f"{base_model}, {objective}, dtype {dtype}, precision {resolve_precision(precision)}, batch {batch_size} "
        f"(eval {eval_batch_size}), history {max_len}, {num_items} items, median of {steps} steps, {hardware()}, "
        f"{torch.get_num_threads()} threads"
    )
    print("| model | train step s | train steps/s | eval users/s | trainable params | params in model |")
    print("|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    table = torch.randn(num_items + 1, 64, generator=g)
    x = torch.randint(1, num_items + 1, (batch_size, max_len), generator=g).to(device)
    y_shape = (batch_size, max_len) if objective == "every_position" else (batch_size,)
    y = torch.randint(1, num_items + 1, y_shape, generator=g).to(device)
    xe = torch.randint(1, num_items + 1, (eval_batch_size, max_len), generator=g).to(device)
    batches = [{"input_ids": x, "labels": y, "index": torch.arange(batch_size)}]
    autocast = autocast_for(precision, device)
    rows = []  # rows: (name, train step s, eval users/s, eval batch s)

    def row(name, model, step_s, eval_s=None):
        if eval_s is None:
            model.eval()
            with torch.no_grad(), autocast:
                eval_s = seconds(lambda: model.score(xe), max(1, steps // 2), warmup=2)
            model.train()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        rows.append((name, step_s, eval_batch_size / eval_s, eval_s))
        print(
            f"| {name} | {step_s:.3f} | {1 / step_s:.2f} | {eval_batch_size / eval_s:.1f} | {trainable:,} | "
            f"{total:,} |",
            flush=True,
        )

    def build_all():
        return {n: build(base_model, n, dtype, max_len, table, device) for n in layers}

    # Each phase times every depth's step, then the distillation step (a frozen teacher of the first depth, the
    # last depth as student); the second holds the frozen weights in the compute dtype (ELLMRec.cast_frozen,
    # what finetune.py and distill.py do), where autocast would cast them at every call.
    cast_to = compute_dtype(precision)
    phases = [("", None)] + ([(f", frozen weights {resolve_precision(precision)}", cast_to)] if cast_to else [])
    for tag, to in phases:
        models = None  # free the previous phase's models first: two sets of a 7B slice need not fit
        models = build_all()
        for n in layers:
            models[n].cast_frozen(to)
            row(f"{n} layers{tag}", models[n], seconds(train_step(models[n], batches, autocast), steps, warmup=2))
        if len(layers) > 1:
            teacher, student = models[layers[0]], models[layers[-1]]
            for p in teacher.parameters():
                p.requires_grad_(False)
            teacher.eval().cast_frozen(to)
            row(
                f"{layers[-1]} layers distilled from {layers[0]}{tag} (teacher forward included)",
                student,
                seconds(train_step(student, batches, autocast, teacher, DistillConfig("")), steps, warmup=2),
                eval_s=rows[-1][3],
            )
            # The same step with the teacher's states read from its cache (distill.py's default offline)
            with tempfile.TemporaryDirectory() as tmp:
                pairs = block_pairs(layers[0], layers[-1], DistillConfig.blocks)
                key = {
                    "teacher_layers": [t for t, _ in pairs],
                    "rows": "all",
                    "with_final": False,
                    "dtype": STORAGE[to or torch.float32][0],
                }
                examples = [{"input_ids": x[i], "labels": y[i]} for i in range(batch_size)]
                states = load_or_build(tmp, key, teacher, examples, autocast, batch_size, device)
                step = train_step(student, batches, autocast, teacher, DistillConfig(""), states)
                row(
                    f"{layers[-1]} layers distilled from {layers[0]}{tag} (teacher states cached)",
                    student,
                    seconds(step, steps, warmup=2),
                    eval_s=rows[-1][3],
                )
    base = rows[0]
    for name, s, u, _ in rows[1:]:
        print(
            f"{name} vs {base[0]}: training {base[1] / s:.2f}x faster per step, "
            f"inference {u / base[2]:.2f}x the users/s"
        )


if __name__ == "__main__":
    run(main)
