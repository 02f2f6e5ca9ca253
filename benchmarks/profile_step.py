"""A training step beside its floor: for the teacher's step and the student's (a distillation step, teacher
states from the cache, when --teacher names a trained teacher; else a plain 4-layer step), in each precision,
the step's time, the FLOPs of its matrix products (torch's FlopCounterMode: forward and backward, the attention
products and the item head included), the time those would take at the matmul throughput this machine reaches
on the model's layer shapes at the step's token count (measured in the same run), and where the rest of the
step goes (torch's profiler, self time by operator), as tables.

    python benchmarks/profile_step.py --teacher out/main/teacher             # bf16 (where native) and fp32
    python benchmarks/profile_step.py --precisions fp32 --lora_dropout 0     # what LoRA's dropout costs
"""

import tempfile

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from slmrec.prepare import DEFAULT_DATA
from slmrec.backbone import load_backbone
from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.distill import DistillConfig, load_teacher, student_config, teacher_states
from slmrec.efficiency import autocast_for, sample_batches, train_step
from slmrec.examples import ExampleConfig, Indexed, training_examples
from slmrec.losses import block_pairs
from slmrec.model import ELLMRec, ELLMRecConfig
from slmrec.packing import attention_name
from slmrec.precision import compute_dtype, native_bf16, resolve_precision
from slmrec.flags import coerce, parse_ints
from slmrec.machine import hardware
from slmrec.timing import linear_shapes, matmul_rate, seconds

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn")


def main(
    data: str = DEFAULT_DATA,
    base_model: str = "smollm2-135m",
    layers="8,4",
    teacher: str = None,
    precisions=None,
    batch_size: int = 16,
    steps: int = 6,
    rows: int = 8,
    lora_dropout: float = 0.05,
    attention: str = "sdpa",
):
    """layers: the teacher's depth, then the student's; precisions: default bf16 (where the CPU computes it
    natively) and fp32; lora_dropout: LoRA's dropout in the timed models (training's default 0.05); attention:
    the students' and teachers' attention implementation in transformers (sdpa, training's, or eager)."""
    dataset = PreparedData(data)
    precisions = (
        coerce("precisions", precisions, list) if precisions else (["bf16"] if native_bf16() else []) + ["fp32"]
    )
    t_layers, s_layers = parse_ints(layers)
    table = torch.randn(dataset.num_items + 1, 64, generator=torch.Generator().manual_seed(0))
    examples = training_examples(dataset, 50, ExampleConfig())
    print(
        f"training steps, batch {batch_size} real {dataset.path} windows, {base_model}, LoRA dropout "
        f"{lora_dropout}, {attention} attention, median of {steps} steps, {hardware()}\n"
    )
    print(
        "| step | precision | step s | matmul GFLOP | matmul TFLOP/s here | floor s | of floor | matmuls' share "
        "| the rest, largest first (self s per step) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    tmp = tempfile.TemporaryDirectory()
    for precision in precisions:
        resolve_precision(precision)
        for n in (t_layers, s_layers):
            t_model = dcfg = states = None
            batch_examples = examples
            if teacher and n == s_layers:
                dcfg = DistillConfig(teacher)
                t_model = load_teacher(dcfg, dataset, n, precision)
                for p in t_model.base_lm().modules():  # the timed dropout, in the teacher's LoRA too
                    if isinstance(p, torch.nn.Dropout):
                        p.p = lora_dropout
                scfg = student_config(t_model.cfg, n, dcfg)
                scfg.lora_dropout = lora_dropout
                model = ELLMRec(scfg, t_model.item_embedding, precision=precision)
                states = teacher_states(
                    DistillConfig(teacher, state_cache=f"{tmp.name}/{precision}"),
                    t_model,
                    dataset,
                    examples,
                    block_pairs(t_model.cfg.num_layers, n, dcfg.blocks),
                    precision,
                    f"{tmp.name}/{precision}",
                )
                batch_examples = Indexed(examples)
                name = f"student, {n} layers, distilled (teacher states cached)"
            else:
                cfg = ELLMRecConfig(base_model=base_model, num_layers=n, lora_dropout=lora_dropout)
                model = ELLMRec(cfg, table, backbone=load_backbone(base_model, n), precision=precision)
                name = f"{'teacher' if n == t_layers else 'student'}, {n} layers, item loss"
            for m in (model, t_model) if t_model is not None else (model,):
                m.base_lm().set_attn_implementation(attention_name(attention))
            batches = sample_batches(batch_examples, batch_size, steps + 3)
            step = train_step(model, batches, autocast_for(precision, "cpu"), t_model, dcfg, states)
            step_s = seconds(step, steps, warmup=2)
            counter = FlopCounterMode(display=False)
            with counter:
                step()
            flops = counter.get_total_flops()
            prompt = len(model.prefix_ids)
            tokens = int(
                batch_size * (prompt + np.mean([int((b["input_ids"] != 0).sum(1).float().mean()) for b in batches]))
            )
            rate = matmul_rate(linear_shapes(model), tokens, compute_dtype(precision) or torch.float32)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(steps):
                    step()
            ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
            total = sum(e.self_cpu_time_total for e in ops)
            mm = sum(e.self_cpu_time_total for e in ops if e.key.startswith(MATMULS))
            rest = ", ".join(
                f"{e.key.replace('aten::', '')} {e.self_cpu_time_total / 1e6 / steps:.3f}"
                for e in ops
                if not e.key.startswith(MATMULS)
            )
            rest = ", ".join(rest.split(", ")[:rows])
            floor = flops / rate
            print(
                f"| {name} | {precision} | {step_s:.3f} | {flops / 1e9:.0f} | {rate / 1e12:.2f} | {floor:.3f} | "
                f"{floor / step_s:.0%} | {mm / total:.0%} | {rest} |",
                flush=True,
            )


if __name__ == "__main__":
    run(main)
