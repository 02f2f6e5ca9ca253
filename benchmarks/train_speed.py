"""The LM-based models' training step, the old way beside the new, in one process (issue 35):

    before   the step before 2026-12-03: the instruction computed in every row, uniformly shuffled batches,
             sdpa attention, nn.Dropout's masks (instruction_once false, --group_by_length false,
             --attention sdpa), the item loss on the whole score matrix
    packed   the instruction once per batch and the rows' real tokens packed after it, no padding (slmrec/packing.py),
             batches of like length; attention, masks and item loss as before
    now      packed, with the defaults' attention (--attention auto) and LoRA masks (MaskDropout, the adapters
             taking a bf16 input without peft's cast to fp32), through the fused forward (slmrec/fused.py), the
             item loss without the score matrix (losses.frozen_item_loss, 2026-12-04)
    compiled now through torch.compile (--compile true)

for the teacher's step (8 layers, item loss) and the student's distillation step (4 layers, eq. 6 with the live
8-layer teacher, whose forward is then part of the step), on each dataset and in each precision.

    python benchmarks/train_speed.py --data data/ml-100k,data/clothing-tenth

Columns: the mean step over the same number of batches drawn at random from each path's own epoch (its batches
differ in length, so a mean, not a median); tokens the LM computes per history token over that whole epoch
(from the examples' lengths: the instruction's P tokens in every row of a batch padded to its longest row, or
once before the packed rows); the epoch time that implies; and the step beside its floor counted on the history
tokens alone: the step's matrix-product FLOPs (torch's FlopCounterMode) scaled to the history tokens, at the
matmul rate this machine reaches on the layers' shapes, measured between the path's timed steps (one pass over
the shapes after each step, the median), so a drift in the VM's speed moves the step and its floor alike; the
first step's time (with torch.compile, the compilation). Random LM weights and item table time the same as
trained ones; the models are SmolLM2's first 8 and 4 layers, LoRA on the MLP (dropout
0.05); AdamW fused, as the Trainer's default; glibc's malloc keeping freed memory, as fit_and_test sets it for
training (runtime.keep_freed_memory, since 2026-12-04; every path of a run alike).
"""

import statistics
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers.trainer_pt_utils import LengthGroupedSampler

from frozen_item_loss import plain
from slmrec.prepare import DEFAULT_DATA
from slmrec.backbone import load_backbone
from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.distill import DistillConfig, student_config
from slmrec.efficiency import autocast_for, collate, train_step
from slmrec.examples import ExampleConfig, training_examples
from slmrec.model import ELLMRec, ELLMRecConfig, MaskDropout, training_attention
from slmrec.packing import attention_name
from slmrec.precision import compute_dtype, native_bf16, resolve_precision
from slmrec.runtime import keep_freed_memory
from slmrec.flags import coerce, parse_ints
from slmrec.machine import hardware, peak_rss_mb
from slmrec.timing import linear_shapes, matmul_rate, seconds


def configure(model, path, precision):
    """Set a model up as the path trains it (see the module docstring)."""
    model.cfg.instruction_once = path != "before"
    new = path in ("now", "compiled")
    model.cfg.fused, model.compile_training = new, path == "compiled"
    if new:
        vars(model).pop("item_loss", None)
    else:  # the loss as it was: every item's score, then torch's cross-entropy
        model.item_loss = lambda h, labels, head=None: plain((head or model.w_out)(h), model.item_embedding, labels)
    model.base_lm().set_attn_implementation(attention_name(training_attention("auto" if new else "sdpa", precision)))
    for module in model.lm.modules():
        if isinstance(getattr(module, "lora_dropout", None), torch.nn.ModuleDict):
            module.cast_input_dtype_enabled = not new  # peft's cast of a bf16 input to the adapter's fp32 before
            for name, d in module.lora_dropout.items():
                p = getattr(d, "p", 0.0)  # peft puts an nn.Identity where --lora_dropout is 0
                module.lora_dropout[name] = MaskDropout(p) if new else torch.nn.Dropout(p)
    model.train(model.training)  # the new dropout modules take the model's mode (the live teacher's is eval)


def epoch_order(lengths, batch_size, grouped, seed):
    """One epoch's batches of example indices: like lengths together (the Trainer's sampler), or shuffled."""
    if grouped:
        torch.manual_seed(seed)
        order = np.fromiter(iter(LengthGroupedSampler(batch_size, lengths=lengths.tolist())), np.int64)
    else:
        order = np.random.default_rng(seed).permutation(len(lengths))
    return [order[lo : lo + batch_size] for lo in range(0, len(order), batch_size)]


def batch_tokens(lengths, prompt, packed):
    """The tokens the LM computes for a batch of examples of these history lengths: the instruction's `prompt`
    tokens once and the real tokens packed after it, or the instruction in every row, padded to the longest."""
    return prompt + lengths.sum() if packed else len(lengths) * (prompt + lengths.max())


def tokens_per_history_token(lengths, batches, prompt, packed):
    """What the LM computes over an epoch, per history token."""
    return sum(batch_tokens(lengths[b], prompt, packed) for b in batches) / lengths.sum()


def lm_share(counter, step_tokens, history_tokens):
    """The step's FLOPs if the LMs computed only the history tokens: the LM modules' FLOPs scaled by
    history / computed tokens, the rest (heads, item scores, losses: per supervised row) as counted."""
    counts = counter.get_flop_counts()
    lm = sum(sum(v.values()) for k, v in counts.items() if k.endswith(".lm") and k.count(".") == 1)
    return lm * history_tokens / step_tokens + (counter.get_total_flops() - lm)


def timed_with_rate(step, steps, shapes, tokens, dtype):
    """(the mean of `steps` calls of step, the matmul rate on `shapes` at `tokens` measured after each call)."""
    times, rates = [], []
    for _ in range(steps):
        times.append(seconds(step, 1, warmup=0))
        rates.append(matmul_rate(shapes, tokens, dtype, repeats=1))
    return statistics.fmean(times), statistics.median(rates)


def main(
    data=DEFAULT_DATA,
    base_model: str = "smollm2-135m",
    layers="8,4",
    precisions=None,
    batch_size: int = 16,
    steps: int = 12,
    seed: int = 0,
    lora_dropout: float = 0.05,
    paths="before,packed,now,compiled",
    models="teacher,student",
):
    """data: prepared datasets, comma-separated; precisions: default bf16 (where the CPU computes it natively)
    and fp32; steps: batches timed per path (after one warm-up step); paths and models: which of them to time
    (comma-separated; the speed-up column is against the first path timed)."""
    precisions = (
        coerce("precisions", precisions, list) if precisions else (["bf16"] if native_bf16() else []) + ["fp32"]
    )
    t_layers, s_layers = parse_ints(layers)
    keep_freed_memory()
    print(
        f"training steps, batch {batch_size}, {base_model} {t_layers} and {s_layers} layers, LoRA dropout "
        f"{lora_dropout}, mean of {steps} steps per path, {hardware()}\n"
    )
    print(
        "| data | step | precision | path | step s | tokens per history token | epoch (steps) | epoch h | "
        "matmul TFLOP/s here | history floor s | of floor | speed-up | first step s | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in coerce("data", data, list):
        dataset = PreparedData(path)
        examples = training_examples(dataset, 50, ExampleConfig())
        lengths = examples.lengths()
        table = torch.randn(dataset.num_items + 1, 64, generator=torch.Generator().manual_seed(0))
        for precision in precisions:
            resolve_precision(precision)
            dtype = compute_dtype(precision) or torch.float32
            cfg = ELLMRecConfig(base_model=base_model, num_layers=t_layers, lora_dropout=lora_dropout)
            teacher = ELLMRec(cfg, table, backbone=load_backbone(base_model, t_layers), precision=precision)
            dcfg = DistillConfig("unused")
            student = ELLMRec(
                student_config(cfg, s_layers, dcfg),
                table,
                backbone=load_backbone(base_model, s_layers),
                precision=precision,
            )
            frozen = ELLMRec(cfg, table, backbone=load_backbone(base_model, t_layers), precision=precision).eval()
            for p in frozen.parameters():
                p.requires_grad_(False)
            P = len(teacher.prefix_ids)
            shapes, tokens = linear_shapes(teacher), int(batch_size * np.mean(lengths))
            for name, model, kd in (("teacher", teacher, None), ("student + live teacher", student, frozen)):
                if name.split()[0] not in coerce("models", models, list):
                    continue
                before = None
                for path_name in coerce("paths", paths, list):
                    packed = path_name != "before"
                    for m in (model, kd) if kd is not None else (model,):
                        configure(m, path_name, precision)
                    epoch = epoch_order(lengths, batch_size, packed, seed)
                    drawn = np.random.default_rng(seed).choice(len(epoch), steps + 1, replace=False)
                    batches = [collate([examples[int(i)] for i in epoch[j]]) for j in drawn]
                    step = train_step(model, batches, autocast_for(precision, "cpu"), kd, dcfg if kd else None)
                    start = time.perf_counter()
                    step()  # the warm-up step: with torch.compile, the compilation
                    first = time.perf_counter() - start
                    step_s, rate = timed_with_rate(step, steps, shapes, tokens, dtype)
                    ratio = tokens_per_history_token(lengths, epoch, P, packed)
                    # FLOPs of one more step (the first drawn batch), and that batch's token counts
                    b = epoch[drawn[(steps + 1) % len(drawn)]]
                    counter = FlopCounterMode(display=False)
                    for m in (model, kd) if kd is not None else (model,):
                        configure(m, "packed" if packed else "before", precision)  # transformers' modules count
                    with counter:
                        step()
                    step_tokens = batch_tokens(lengths[b], P, packed)
                    floor_flops = lm_share(counter, step_tokens, lengths[b].sum())
                    # the step's floor scaled to the epoch's mean batch: FLOPs per history token x its tokens
                    floor = floor_flops / lengths[b].sum() * lengths.sum() / len(epoch) / rate
                    speedup = f"{before / step_s:.2f}x" if before else "1"
                    before = before or step_s
                    print(
                        f"| {dataset.path.name} | {name} | {precision} | {path_name} | "
                        f"{step_s:.3f} | {ratio:.2f} | {len(epoch):,} | {step_s * len(epoch) / 3600:.2f} | "
                        f"{rate / 1e12:.2f} | {floor:.3f} | {floor / step_s:.0%} | {speedup} | {first:.1f} | "
                        f"{peak_rss_mb():.0f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    run(main)
