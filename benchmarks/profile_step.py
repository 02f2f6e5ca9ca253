"""Where a training step's time goes: torch's profiler over a few E-LLMRec training steps on real ml-100k windows,
the operators that took the most time, as a table.

    python benchmarks/profile_step.py --precision fp32               # the 8-layer teacher's step
    python benchmarks/profile_step.py --layers 4 --teacher out/main/teacher   # a distillation step, cached states
"""

import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from slmrec.backbone import load_backbone
from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.distill import DistillConfig, load_teacher, student_config, teacher_states
from slmrec.efficiency import autocast_for, sample_batches, train_step
from slmrec.examples import ExampleConfig, Indexed, training_examples
from slmrec.losses import block_pairs
from slmrec.model import ELLMRec, ELLMRecConfig
from slmrec.precision import resolve_precision
from slmrec.utils import hardware


def main(data: str = "data/ml-100k", base_model: str = "smollm2-135m", layers: int = 8, teacher: str = None,
         precision: str = "auto", batch_size: int = 16, steps: int = 4, rows: int = 15):
    """teacher: a trained teacher's run directory: then a distillation step of a fresh `layers`-layer student
    (teacher states read from a cache built in a temporary folder)."""
    dataset = PreparedData(data)
    table = torch.randn(dataset.num_items + 1, 64, generator=torch.Generator().manual_seed(0))
    examples = training_examples(dataset, 50, ExampleConfig())
    t_model = dcfg = states = None
    if teacher:
        dcfg = DistillConfig(teacher)
        t_model = load_teacher(dcfg, dataset, layers, precision)
        model = ELLMRec(student_config(t_model.cfg, layers, dcfg), t_model.item_embedding, precision=precision)
        tmp = tempfile.TemporaryDirectory()
        states = teacher_states(DistillConfig(teacher, state_cache=tmp.name), t_model, dataset, examples,
                                block_pairs(t_model.cfg.num_layers, layers, dcfg.blocks), precision, tmp.name)
        examples = Indexed(examples)
    else:
        model = ELLMRec(ELLMRecConfig(base_model=base_model, num_layers=layers), table,
                        backbone=load_backbone(base_model, layers), precision=precision)
    batches = sample_batches(examples, batch_size, steps + 1)
    step = train_step(model, batches, autocast_for(precision, "cpu"), t_model, dcfg, states)
    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
    print(f"{'distillation' if teacher else 'training'} step of {layers} layers, batch {batch_size} real ml-100k "
          f"windows, {resolve_precision(precision)}, {hardware()}: {total / steps:.3f} s a step (profiled, "
          f"{steps} steps)\n")
    print("| operator | self time s per step | share | calls per step |\n|---|---|---|---|")
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:rows]:
        print(f"| {e.key} | {e.self_cpu_time_total / 1e6 / steps:.3f} | {e.self_cpu_time_total / 1e6 / total:.1%} | "
              f"{e.count // steps} |")


if __name__ == "__main__":
    run(main)
