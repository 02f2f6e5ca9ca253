"""SLMRec distillation as a transformers.Trainer subclass: the student's item loss plus the block-wise
feature terms of eq. 6, from a frozen teacher (offline) or one trained alongside (online)."""

import dataclasses
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from .examples import ExampleConfig
from .inference import autocast
from .losses import NORM_VARIANTS, block_pairs, cosine_loss, logit_kd_loss, norm_loss
from .model import ELLMRec, ELLMRecConfig, load_ellmrec
from .teacher_cache import TeacherStates, cache_key, load_or_build
from .checkpoints import load_checkpoint_config, save_model
from .precision import compute_dtype
from .training import RecTrainer, check_finite
from .errors import FlagError

log = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    teacher: str  # the teacher's checkpoint directory
    kd_mode: str = "offline"  # offline: frozen trained teacher; online: a fresh teacher trained alongside
    blocks: int = 4
    # The embedded default's weights and D_norm form, chosen on ml-100k's validation split (docs/defaults.md);
    # the paper's (lambda_norm 0.1 on the squared norm) are in the paper presets (experiments.py).
    lambda_cos: float = 1.0
    lambda_norm: float = 1.0
    lambda_ms: float = 1.0
    lambda_kl: float = 0.0  # logit KD, a comparison mode
    temperature: float = 1.0
    norm_variant: str = "relative"  # squared (paper eq. 4), unsquared (the original code), relative (losses.py)
    feature_positions: str = "all"  # all: the feature terms at every supervised position; final: the readout only
    # auto: the frozen teacher's states computed once and read from disk where that is exact (offline KD over a
    # fixed example set: not --sampling user), the live teacher otherwise; cache: insist; live: never cache
    teacher_states: str = "auto"
    state_cache: str = ""  # where the teacher-state caches go; "" = <teacher>/state_cache
    state_cache_max_gb: float = 100.0  # a cache larger than this (or than the free disk) is not built: live teacher

    def __post_init__(self):  # flags are checked when the config is made, before any work
        if self.kd_mode not in ("offline", "online"):
            raise FlagError(f"--kd_mode must be offline or online, not {self.kd_mode!r}")
        if self.norm_variant not in NORM_VARIANTS:
            raise FlagError(f"--norm_variant must be one of {NORM_VARIANTS}, not {self.norm_variant!r}")
        if self.feature_positions not in ("all", "final"):
            raise FlagError(f"--feature_positions must be all or final, not {self.feature_positions!r}")
        if self.teacher_states not in ("auto", "cache", "live"):
            raise FlagError(f"--teacher_states must be auto, cache or live, not {self.teacher_states!r}")
        if self.teacher_states == "cache" and self.kd_mode == "online":
            raise FlagError("--teacher_states cache needs offline KD: online, the teacher changes at every step")
        if not self.state_cache_max_gb >= 0:
            raise FlagError(f"--state_cache_max_gb must be at least 0, not {self.state_cache_max_gb}")
        if self.state_cache and Path(self.state_cache).exists() and not Path(self.state_cache).is_dir():
            raise FlagError(
                f"--state_cache {self.state_cache} is a file, not a folder (the teacher-state caches go in it)"
            )
        if min(self.lambda_cos, self.lambda_norm, self.lambda_ms, self.lambda_kl) < 0 or self.temperature <= 0:
            raise FlagError("the lambdas must be >= 0 and the temperature > 0")


def student_config(teacher_cfg: ELLMRecConfig, num_layers, dcfg: DistillConfig, **overrides) -> ELLMRecConfig:
    """The student: the teacher's recipe on its base LM's first num_layers layers, with fresh LoRA and heads,
    and an adapter head after each intermediate block when L_ms is on."""
    pairs = block_pairs(teacher_cfg.num_layers, num_layers, dcfg.blocks)
    adapters = [s for _, s in pairs[:-1]] if dcfg.lambda_ms > 0 else []
    return dataclasses.replace(teacher_cfg, num_layers=num_layers, adapter_layers=adapters, **overrides)


def load_teacher(dcfg: DistillConfig, data, student_layers, precision=None):
    """Checks that need no model first (B divides both depths, same data), then the teacher: trained and
    frozen (offline), or fresh from the same config (online); precision: as ELLMRec's."""
    cfg = load_checkpoint_config(dcfg.teacher, "ellmrec")
    block_pairs(cfg["num_layers"], student_layers, dcfg.blocks)
    teacher = load_ellmrec(dcfg.teacher, data, precision=precision)
    if dcfg.kd_mode == "online":
        teacher = ELLMRec(
            dataclasses.replace(teacher.cfg, adapter_layers=[]), teacher.item_embedding, precision=precision
        )
        return teacher.train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def needs_teacher(d: DistillConfig) -> bool:
    return d.lambda_cos > 0 or d.lambda_norm > 0 or d.lambda_kl > 0 or d.kd_mode == "online"


def live_teacher_rows(teacher, d: DistillConfig, pairs, x, y, training) -> dict:
    """The teacher's aligned block states and final state at the supervised rows, from a forward pass (with
    gradients only for an online teacher in training)."""
    with torch.set_grad_enabled(d.kd_mode == "online" and training):
        out = teacher.supervised(x, y, layer_states=True)
    return {
        "states": [out["states"][t - 1] for t, _ in pairs],
        "final": out["h"],
        "labels": out["labels"],
        "final_only": False,
    }


def distill_loss(model, teacher, d: DistillConfig, pairs, x, y, cached=None):
    """Eq. 6: (total loss, {term: value}, the student's outputs) for histories x and targets y (labels [B] or
    [B, L], as ELLMRec.forward takes them). Teacher and student share the prompt and readout, so their
    supervised rows are the same positions of the same inputs. cached: the teacher's rows for this batch read
    from its state cache (TeacherStates.rows), instead of running it."""
    out = model(input_ids=x, labels=y, layer_states=True)
    terms = {"ce": out["loss"]}
    if needs_teacher(d):
        t = cached if cached is not None else live_teacher_rows(teacher, d, pairs, x, y, model.training)
        if d.kd_mode == "online":
            terms["teacher_ce"] = teacher.item_loss(t["final"], t["labels"])
        final = out["final"] if d.feature_positions == "final" else slice(None)
        # Online, the feature terms train the student towards the teacher, not the teacher towards it.
        t_feats = [s.detach() if t["final_only"] else s[final].detach() for s in t["states"]]
        s_feats = [out["states"][s - 1][final] for _, s in pairs]
        if d.lambda_cos > 0:
            terms["cos"] = cosine_loss(t_feats, s_feats)
        if d.lambda_norm > 0:
            terms["norm"] = norm_loss(t_feats, s_feats, d.norm_variant)
        if d.lambda_kl > 0:
            terms["kl"] = logit_kd_loss(
                teacher.item_scores(t["final"]).detach(), model.item_scores(out["h"]), d.temperature
            )
    if d.lambda_ms > 0 and model.adapters:
        terms["ms"] = model.multi_supervision_loss(out["states"], out["labels"])
    weights = {
        "ce": 1.0,
        "teacher_ce": 1.0,
        "cos": d.lambda_cos,
        "norm": d.lambda_norm,
        "ms": d.lambda_ms,
        "kl": d.lambda_kl,
    }
    return sum(weights[k] * v for k, v in terms.items()), terms, out


def caches_teacher(d: DistillConfig, examples_cfg: ExampleConfig, num_examples=None, planned_examples=None) -> bool:
    """Whether the teacher's states come from a cache: where they are exact (a frozen teacher, and the same
    examples every epoch) and used at all, unless --teacher_states live. With auto, also only where training
    visits at least num_examples examples (planned_examples, counting repeats): the cache costs one teacher
    pass over every example, which a run of a fraction of an epoch (the paper presets on Amazon) would not
    repay."""
    exact = d.kd_mode == "offline" and examples_cfg.sampling == "target"
    if d.teacher_states == "cache" and not exact:
        raise FlagError(
            "--teacher_states cache needs offline KD over a fixed example set (not --kd_mode online "
            "or --sampling user, whose teacher states change from step to step)"
        )
    if d.teacher_states == "auto" and planned_examples is not None and planned_examples < num_examples:
        log.info(
            "teacher states: live (training visits %d of %d examples, less than the one pass a cache costs)",
            planned_examples,
            num_examples,
        )
        return False
    return d.teacher_states != "live" and exact and needs_teacher(d)


def teacher_states(
    d: DistillConfig, teacher, data, examples, pairs, precision, output_dir, batch_size=64, device="cpu"
) -> TeacherStates | None:
    """The teacher's state cache for this run, built on first use: under --state_cache, else beside the
    teacher (<teacher>/state_cache, shared by every student of that teacher), or in the run's own folder
    when the teacher's is not writable. None (the live teacher) when it would not fit (load_or_build)."""
    root = Path(d.state_cache) if d.state_cache else Path(d.teacher) / "state_cache"
    if not d.state_cache and not os.access(d.teacher, os.W_OK):
        root = Path(output_dir) / "teacher_states"
    return load_or_build(
        root,
        states_key(d, teacher, data, examples, pairs, precision),
        teacher,
        examples,
        autocast(device, compute_dtype(precision)),
        batch_size,
        device,
        d.state_cache_max_gb * 1e9,
    )


def states_key(d: DistillConfig, teacher, data, examples, pairs, precision) -> dict:
    """The cache key (teacher_cache.cache_key) of the states this distillation reads: the readout rows alone
    when only the final position's features are used, every row otherwise (and the final state for logit KD)."""
    rows = "final" if d.feature_positions == "final" and d.lambda_kl == 0 else "all"
    dtype = compute_dtype(precision) or torch.float32
    return cache_key(d.teacher, teacher, data, examples, [t for t, _ in pairs], rows, d.lambda_kl > 0, dtype)


class OnlineTeacherSteps(TrainerCallback):
    """The Trainer clips and zeroes the gradients of the model it trains only, not those of an online
    teacher that shares its optimizer: clip the teacher's to the same norm (as if trained alone) before each
    optimizer step, and clear them after it, or they pile up from step to step."""

    def __init__(self, teacher):
        self.params = [p for p in teacher.parameters() if p.requires_grad]

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, args.max_grad_norm)

    def on_optimizer_step(self, args, state, control, **kwargs):
        for p in self.params:
            p.grad = None


class DistillTrainer(RecTrainer):
    def __init__(self, *args, teacher, distill: DistillConfig, states: TeacherStates = None, **kwargs):
        """states: the teacher's state cache (teacher_states); the examples then carry their "index"."""
        super().__init__(*args, **kwargs)
        self.teacher, self.dcfg, self.states = teacher.to(self.args.device), distill, states
        student_cfg = self.model.cfg
        self.pairs = block_pairs(teacher.cfg.num_layers, student_cfg.num_layers, distill.blocks)
        if teacher.lm.config.hidden_size != self.model.lm.config.hidden_size:
            raise FlagError(
                f"teacher hidden size {teacher.lm.config.hidden_size} != student's "
                f"{self.model.lm.config.hidden_size}: feature distillation needs equal sizes"
            )
        if distill.kd_mode == "online":
            if self.args.world_size > 1:
                raise FlagError("online KD trains the teacher outside DDP: run it on one process")
            self.add_callback(OnlineTeacherSteps(self.teacher))
        self._terms = defaultdict(list)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.dcfg.kd_mode == "online":  # the teacher learns with the student, same schedule
            params = [p for p in self.teacher.parameters() if p.requires_grad]
            optimizer.add_param_group({"params": params, "weight_decay": self.args.weight_decay})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Accelerate puts autocast on the prepared model's forward only: without this the teacher, which
        # the Trainer never prepares, would run in fp32 (a slower step wherever bf16 is the faster precision).
        cached = self.states.rows(inputs["index"], self.args.device) if self.states is not None else None
        with self.accelerator.autocast():
            loss, terms, out = distill_loss(
                model, self.teacher, self.dcfg, self.pairs, inputs["input_ids"], inputs["labels"], cached
            )
        check_finite(terms, self.state.global_step + 1)
        if model.training:
            for k, v in terms.items():
                self._terms[k].append(v.detach().item())
        return (loss, out) if return_outputs else loss

    def log(self, logs, start_time=None):
        # Each term's mean since the last log, beside the Trainer's total loss (TensorBoard and the log).
        if "loss" in logs and self._terms:
            logs.update({f"loss_{k}": sum(v) / len(v) for k, v in self._terms.items()})
            self._terms.clear()
        super().log(logs, start_time)

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        if self.dcfg.kd_mode == "online" and self.args.should_save:
            save_model(self.teacher, Path(output_dir or self.args.output_dir) / "teacher")
