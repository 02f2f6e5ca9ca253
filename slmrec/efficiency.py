"""Paper Table 5: training time per epoch, inference speed and parameters of trained models, measured one after
another in one process so the numbers compare. Training is timed over a whole epoch of each run's own training
examples (one optimiser step per batch, batches in a shuffled order); a student's epoch is a distillation epoch
as distill.py trains it (teacher states read from the cache, or the live teacher where the run had one), and
its teacher-state cache is built again here and timed beside it. Inference: the fast scoring path
(slmrec/inference.py) over every test user."""

import tempfile
import time

import numpy as np
import torch

from .distill import DistillConfig, caches_teacher, distill_loss, load_teacher, states_key
from .examples import ExampleConfig, Indexed, training_examples
from .inference import InferenceConfig, autocast, load_scorer
from .losses import block_pairs
from .metrics import evaluate
from .model import load_ellmrec
from .teacher_cache import load_or_build
from .precision import compute_dtype
from .files import load_json
from .machine import compute_device
from .timing import sync


def autocast_for(precision, device):
    return autocast(device, compute_dtype(precision))


def train_step(model, batches, autocast, teacher=None, dcfg=None, states=None):
    """One optimiser step per call, cycling through batches ({"input_ids", "labels"[, "index"]}); with a
    teacher, the distillation step of distill.py (eq. 6), its teacher states read from `states` if given."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, fused=True)  # the Trainer's default optimiser (adamw_torch_fused)
    pairs = block_pairs(teacher.cfg.num_layers, model.cfg.num_layers, dcfg.blocks) if teacher else None
    state = {"i": 0}

    def step():
        batch = batches[state["i"] % len(batches)]
        state["i"] += 1
        model.train()
        x, y = batch["input_ids"], batch["labels"]
        cached = states.rows(batch["index"], x.device) if states is not None else None
        with autocast:
            loss = (
                distill_loss(model, teacher, dcfg, pairs, x, y, cached)[0]
                if teacher
                else model(input_ids=x, labels=y)["loss"]
            )
        loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def param_counts(model):
    """(trainable, inference): inference counts what scoring a user needs, so the L_ms adapters (training
    only) are left out and the frozen item table is in."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapters = sum(p.numel() for p in model.adapters.parameters())
    inference = sum(p.numel() for p in model.parameters()) - adapters + model.item_embedding.numel()
    return trainable, inference


def collate(items, device="cpu") -> dict:
    return {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}


def sample_batches(examples, batch_size, n, device="cpu", seed=0) -> list:
    """n batches of real training examples, drawn at random with a fixed seed."""
    g = np.random.default_rng(seed)
    return [
        collate([examples[int(i)] for i in g.choice(len(examples), batch_size, replace=False)], device)
        for _ in range(n)
    ]


def epoch_batches(examples, batch_size, device="cpu", seed=0) -> list:
    """Every example once, in a shuffled order, cut into batches (the last one shorter): one epoch."""
    order = np.random.default_rng(seed).permutation(len(examples))
    return [
        collate([examples[int(i)] for i in order[lo : lo + batch_size]], device)
        for lo in range(0, len(order), batch_size)
    ]


def measure(name, run_dir, data, batch_size=16, precision="auto", device=None):
    """One row of Table 5 for a trained run directory (a finetune.py or distill.py output)."""
    device = device or compute_device()
    run_config = load_json(f"{run_dir}/run_config.json")
    model = load_ellmrec(run_dir, data, precision=precision).to(device)  # as finetune.py and distill.py train
    examples_cfg = ExampleConfig(**run_config.get("examples", {}))
    examples = training_examples(data, model.cfg.max_len, examples_cfg)
    teacher = dcfg = states = None
    row = {"model": name, "layers": model.cfg.num_layers}
    if "distill" in run_config:  # a student: its training step is distill.py's
        dcfg = DistillConfig(**run_config["distill"])
        teacher = load_teacher(dcfg, data, model.cfg.num_layers, precision).to(device)
    if teacher is not None and caches_teacher(dcfg, examples_cfg):
        pairs = block_pairs(teacher.cfg.num_layers, model.cfg.num_layers, dcfg.blocks)
        key = states_key(dcfg, teacher, data, examples, pairs, precision)
        with tempfile.TemporaryDirectory() as tmp:  # built afresh, to be timed beside the epochs
            sync()
            t = time.perf_counter()
            built = load_or_build(tmp, key, teacher, examples, autocast_for(precision, device), 64, device)
            sync()
            row["cache_build_s"] = time.perf_counter() - t
            row["cache_mb"] = sum(f.stat().st_size for f in built.path.iterdir()) / 1e6
            row["cache_rows"] = int(built.meta["total_rows"])
            states = built
            row.update(_time_epoch(model, Indexed(examples), batch_size, precision, device, teacher, dcfg, states))
    else:
        row.update(_time_epoch(model, examples, batch_size, precision, device, teacher, dcfg))
    row["train_examples"] = len(examples)
    del teacher, states
    scorer, max_len = load_scorer(run_dir, data, InferenceConfig(precision=precision), device)
    sync()
    t = time.perf_counter()
    evaluate(scorer, data, "test", max_len, InferenceConfig.batch_size, device, by_length=True)
    sync()
    row["inference_s"] = time.perf_counter() - t
    row["test_users"] = data.num_rows("test")
    row["trainable_params"], row["inference_params"] = param_counts(model)
    return row


def _time_epoch(model, examples, batch_size, precision, device, teacher=None, dcfg=None, states=None) -> dict:
    """Seconds of one whole epoch of optimiser steps, after one warm-up step that is not counted."""
    batches = epoch_batches(examples, batch_size, device)
    step = train_step(model, batches, autocast_for(precision, device), teacher, dcfg, states)
    step()  # warm-up (first-call allocations), then the epoch from its first batch
    step = train_step(model, batches, autocast_for(precision, device), teacher, dcfg, states)
    sync()
    t = time.perf_counter()
    for _ in batches:
        step()
    sync()
    seconds = time.perf_counter() - t
    return {"epoch_s": seconds, "steps_per_epoch": len(batches), "train_step_s": seconds / len(batches)}
