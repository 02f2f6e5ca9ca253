"""Paper Table 5: training time per epoch, inference time over all test users, trainable and inference
parameters of trained models, measured one after another in one process so the numbers compare."""

import math
import time

import numpy as np
import torch

from .distill import DistillConfig, distill_loss, load_teacher
from .losses import block_pairs
from .metrics import evaluate
from .examples import ExampleConfig, training_examples
from .model import load_ellmrec
from .inference import autocast
from .training import compute_dtype
from .utils import load_json


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(fn, steps, warmup=2):
    times = []
    for _ in range(steps + warmup):
        _sync()
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return sorted(times[warmup:])[steps // 2]


def autocast_for(precision, device):
    return autocast(device, compute_dtype(precision))


def train_step(model, batches, autocast, teacher=None, dcfg=None):
    """One optimiser step per call, cycling through batches; with a teacher, the distillation step of
    distill.py (teacher forward and eq. 6)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    pairs = block_pairs(teacher.cfg.num_layers, model.cfg.num_layers, dcfg.blocks) if teacher else None
    state = {"i": 0}

    def step():
        x, y = batches[state["i"] % len(batches)]
        state["i"] += 1
        model.train()
        with autocast:
            loss = distill_loss(model, teacher, dcfg, pairs, x, y)[0] if teacher else model(x, y)["loss"]
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


def sample_batches(examples, batch_size, n, device="cpu", seed=0) -> list:
    """n (histories, next items) batches of real training examples, drawn at random with a fixed seed."""
    g = np.random.default_rng(seed)
    batches = []
    for _ in range(n):
        items = [examples[int(i)] for i in g.choice(len(examples), batch_size, replace=False)]
        batches.append((torch.stack([it["input_ids"] for it in items]).to(device),
                        torch.stack([it["labels"] for it in items]).to(device)))
    return batches


def measure(name, run_dir, data, batch_size=16, eval_batch_size=64, steps=5, precision="auto", device=None):
    """One row of Table 5 for a trained run directory (a finetune.py or distill.py output)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run_config = load_json(f"{run_dir}/run_config.json")
    model = load_ellmrec(run_dir, data).to(device)
    teacher = dcfg = None
    if "distill" in run_config:  # a student: its training step includes the teacher, as in distill.py
        dcfg = DistillConfig(**run_config["distill"])
        teacher = load_teacher(dcfg, data, model.cfg.num_layers).to(device)
    for m in (model, teacher) if teacher else (model,):  # as finetune.py and distill.py train
        m.cast_frozen(compute_dtype(precision))
    examples = training_examples(data, model.cfg.max_len, ExampleConfig(**run_config.get("examples", {})))
    batches = sample_batches(examples, batch_size, steps + 2, device)
    autocast = autocast_for(precision, device)
    step_s = median_seconds(train_step(model, batches, autocast, teacher, dcfg), steps)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    model.eval()
    _sync()
    t = time.perf_counter()
    with torch.no_grad(), autocast:
        evaluate(model.score, data, "test", model.cfg.max_len, eval_batch_size, device)
    _sync()
    infer_s = time.perf_counter() - t
    trainable, inference = param_counts(model)
    return {"model": name, "layers": model.cfg.num_layers, "train_step_s": step_s, "steps_per_epoch": steps_per_epoch,
            "epoch_s": step_s * steps_per_epoch, "inference_s": infer_s, "test_users": data.num_users,
            "trainable_params": trainable, "inference_params": inference}
