"""transformers.Trainer wired to the project's evaluator and checkpoint format, shared by every model."""

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from .checkpoints import (
    WEIGHTS,
    CheckpointError,
    RunDir,
    load_trained_weights,
    load_weights,
    newest_complete_checkpoint,
    save_model,
    settings_changed,
)
from .inference import FastELLMRec, InferenceConfig, auto_compile
from .metrics import evaluate, flatten
from .model import ELLMRec
from .precision import resolve_precision
from .runtime import keep_freed_memory
from .errors import NonFiniteError
from .errors import FlagError
from .files import jsonable, load_json, run_lock, save_json, save_npz
from .machine import can_compile, compute_device, hardware, peak_rss_mb

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    max_steps: int = -1  # overrides epochs when > 0
    epochs: float = 200
    batch_size: int = 128
    eval_batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    eval_steps: int = 0  # evaluate on validation and save every this many steps; 0 = once per epoch
    patience: int = 0  # stop after this many evaluations without a better validation MRR; 0 = never
    save_total_limit: int = 2
    logging_steps: int = 10
    seed: int = 42
    precision: str = "auto"  # auto (bf16 where the hardware computes it natively, else fp32), fp32, bf16, fp16
    # validations rank the stored candidates (the paper's protocol, which picks the checkpoint); true: also every
    # item, as the test does (|I| scores per user: on a large catalogue it costs more than the training)
    full_ranking_valid: bool = False
    # training batches of examples of like history length (transformers' LengthGroupedSampler: random groups of
    # 50 batches, each sorted by length, so the order stays random and seeded): the LMs compute no padding
    # either way (slmrec/packing.py), but their attention gathers each row to the batch's longest, and a batch
    # of the sequential models is trimmed to its longest row; false: uniformly shuffled batches
    group_by_length: bool = True
    # the LM-based models' training forward (slmrec/fused.py) through torch.compile: a few minutes
    # to compile at the first step, then a faster step (benchmarks/README.md, "Training speed"); for long runs
    compile: bool = False

    def __post_init__(self):  # flags are checked when the config is made, before any work
        for name in ("batch_size", "eval_batch_size", "logging_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                raise FlagError(f"--{name} must be at least 1, not {getattr(self, name)}")
        for name in ("weight_decay", "warmup_steps", "max_grad_norm", "eval_steps", "patience"):
            if getattr(self, name) < 0:
                raise FlagError(f"--{name} must be at least 0, not {getattr(self, name)}")
        if not self.learning_rate > 0 or not self.epochs > 0 or self.max_steps == 0:
            raise FlagError("--learning_rate and --epochs must be above 0, and --max_steps -1 (off) or above 0")
        resolve_precision(self.precision)
        if self.compile and not can_compile(compute_device()):
            raise FlagError("--compile true: torch.compile needs a C++ compiler (g++ or clang++), or Triton on a GPU")


# The LM-based models' (teacher and student) training defaults over TrainConfig's: 4 epochs, the cosine
# schedule reaching zero at the end of the 4th, validation once per epoch, the best checkpoint by validation
# MRR and an early stop after 2 validations without a better one; batch 16, AdamW lr 2e-3, 50 warm-up steps.
# Chosen on ml-100k's validation split with SmolLM2 (docs/defaults.md): every curve peaked at
# epoch 2-3 and declined after, and decaying the rate by epoch 4 gave the best peak.
ELLMREC_TRAIN = dict(
    epochs=4,
    patience=2,
    batch_size=16,
    eval_batch_size=64,
    learning_rate=2e-3,
    lr_scheduler="cosine",
    warmup_steps=50,
    logging_steps=10,
)


# SASRec's, GRU4Rec's and BERT4Rec's over TrainConfig's: early stopping on validation MRR, in fp32, on uniformly
# shuffled batches (small models: bf16 and length groups would save little and change their recorded numbers).
SEQREC_TRAIN = dict(epochs=200, patience=20, precision="fp32", group_by_length=False)


def steps_per_epoch(cfg: TrainConfig, num_examples) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return max(1, math.ceil(num_examples / (cfg.batch_size * world)))


def training_arguments(cfg: TrainConfig, output_dir, num_examples=None) -> TrainingArguments:
    """num_examples: the training set's size, which sets eval_steps = 0 (once per epoch) in steps."""
    cuda = torch.cuda.is_available()
    precision = resolve_precision(cfg.precision)
    eval_steps = cfg.eval_steps or steps_per_epoch(cfg, num_examples)
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=cfg.max_steps,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        max_grad_norm=cfg.max_grad_norm,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="MRR",
        greater_is_better=True,
        logging_steps=cfg.logging_steps,
        report_to=["tensorboard"],
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        remove_unused_columns=False,
        disable_tqdm=False,
        ddp_find_unused_parameters=False,
        # Without a GPU: CPU, and gloo when launched with torchrun (DDP on CPU).
        use_cpu=not cuda,
        ddp_backend="gloo" if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )


def check_finite(terms: dict, step):
    """Stop training at the first non-finite loss term, naming the step and the term."""
    for name, value in terms.items():
        if not torch.isfinite(value).all():
            raise NonFiniteError(
                f"step {step}: the {name} loss is {value.item()}: training diverged (try a lower "
                f"--learning_rate) or the inputs hold non-finite values; nothing was saved from it"
            )


class ValidationLine(TrainerCallback):
    """One compact line per validation (the full curve is in TensorBoard): where training is, the validation
    metrics, the best MRR so far and the training loss since the previous validation."""

    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        m = {k.removeprefix("eval_"): v for k, v in (metrics or {}).items()}
        best = max([e["eval_MRR"] for e in state.log_history if "eval_MRR" in e] + [m.get("MRR", 0.0)])
        loss = f"{sum(self.losses) / len(self.losses):.4f}" if self.losses else "-"
        self.losses = []
        log.info(
            "validation | epoch %.2f step %d | MRR %.4f NDCG@10 %.4f HR@10 %.4f | best MRR %.4f | "
            "train loss %s | %.0fs",
            state.epoch or 0,
            state.global_step,
            m.get("MRR", float("nan")),
            m.get("NDCG@10", float("nan")),
            m.get("HR@10", float("nan")),
            best,
            loss,
            m.get("train_seconds", 0),
        )


class SmallCheckpoints(Trainer):
    """The project's checkpoint format (slmrec/checkpoints.py: trained weights only) in the Trainer's saving and
    loading. transformers has no public hook for these three, so this is the one place that overrides its private
    methods; checked against transformers 4.56 and 5.24 (requirements.txt bounds it below 6)."""

    def _save(self, output_dir=None, state_dict=None):
        if self.args.should_save:
            save_model(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # Checkpoints hold only trained weights: the Trainer's own loader would warn about every frozen weight
        # and accept a checkpoint of another model.
        state = load_weights(Path(resume_from_checkpoint) / WEIGHTS)
        load_trained_weights(self.accelerator.unwrap_model(model or self.model), state, resume_from_checkpoint)

    def _load_best_model(self):
        self._load_from_checkpoint(self.state.best_model_checkpoint)


def ranking(model, precision, device, users=0) -> dict:
    """evaluate()'s scorer and batching for validation and test during training. An E-LLMRec scores through the
    fast path (FastELLMRec: the instruction's keys and values once, batches of similar history length, the
    project's LLaMA forward with LoRA folded into copies), which gives ELLMRec.score's ranks in fp32 within
    rounding (tests/test_inference.py) at several times the users/s in bf16 (benchmarks/README.md, "Validation
    during training"): built afresh on the current weights at every call, and leaving the model as it trains (LoRA
    not merged, weights in their dtype, its attention kept), compiled for `users` histories where
    inference.auto_compile says it pays. SASRec, GRU4Rec and BERT4Rec rank from their user states and item table
    (metrics.FactoredRanking), in batches of similar history length trimmed of their padding."""
    if isinstance(model, ELLMRec):
        cfg = InferenceConfig(precision=precision, merge_lora=False, residual="fp32", attention="keep")
        cfg = auto_compile(cfg, users, device)
        return dict(score_fn=FastELLMRec(model, cfg, torch.device(device).type), by_length=True)
    return dict(score_fn=model.score, user_fn=model.user_states, items=model.item_table(), by_length=True)


class RecTrainer(SmallCheckpoints):
    """Evaluates with the project's evaluator on the stored validation candidates; saves small checkpoints."""

    def __init__(self, *args, data, max_len, full_ranking_valid=False, group_by_length=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.data, self.max_len, self.full_ranking_valid = data, max_len, full_ranking_valid
        self.group_by_length = group_by_length
        self.precision = "bf16" if self.args.bf16 else "fp16" if self.args.fp16 else "fp32"
        self.started = time.time()

    def _get_train_sampler(self, train_dataset=None):
        # The one private method overridden outside SmallCheckpoints (checked against transformers 4.56 and 5.24):
        # the examples' lengths are known without reading them (examples.py: lengths()), where the Trainer's own
        # grouping would read every example and take its padded length.
        dataset = train_dataset or self.train_dataset
        if not self.group_by_length:
            return super()._get_train_sampler(dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=dataset.lengths().tolist()
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        check_finite({"item": out[0] if return_outputs else out}, self.state.global_step + 1)
        return out

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        model = self.model
        was_training = model.training
        model.eval()
        with self.accelerator.autocast():  # evaluate in the training precision
            result = evaluate(
                data=self.data,
                split="valid",
                max_len=self.max_len,
                batch_size=self.args.per_device_eval_batch_size,
                device=self.args.device,
                full=self.full_ranking_valid,
                progress=True,
                **ranking(model, self.precision, self.args.device, self.data.num_rows("valid")),
            )
        model.train(was_training)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in flatten(result).items()}
        # Wall-clock seconds of this process's training so far, validations included: the time to the best
        # checkpoint (test_metrics.json) comes from here.
        metrics[f"{metric_key_prefix}_train_seconds"] = time.time() - self.started
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def fit_and_test(
    model,
    data,
    train_dataset,
    cfg: TrainConfig,
    run: RunDir,
    max_len,
    run_config,
    trainer_cls=RecTrainer,
    extra_metrics=None,
    **trainer_kwargs,
) -> dict:
    """Train with best-by-validation-MRR checkpointing, save the best model to output_dir, write
    output_dir/test_metrics.json (candidates at top level, full ranking under "full", and extra_metrics: what
    the caller measured before training). run: the output folder and resume mode, as open_run_dir checked
    them before the caller loaded anything."""
    output_dir = run.path
    keep_freed_memory()  # a step's freed buffers reused by the next, not faulted in again
    with _opened_run(cfg, run, run_config) as checkpoint:
        args = training_arguments(cfg, output_dir, len(train_dataset))
        callbacks = [ValidationLine()] + ([EarlyStoppingCallback(cfg.patience)] if cfg.patience > 0 else [])
        # The Trainer insists on an eval_dataset; RecTrainer.evaluate ignores it and ranks data's validation split.
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=train_dataset,
            data=data,
            max_len=max_len,
            full_ranking_valid=cfg.full_ranking_valid,
            group_by_length=cfg.group_by_length,
            callbacks=callbacks,
            **trainer_kwargs,
        )
        log.info(
            "training on %s, %d process(es), %d examples, validation every %d steps",
            args.device,
            args.world_size,
            len(train_dataset),
            args.eval_steps,
        )
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        train_seconds = time.time() - trainer.started
        # With load_best_model_at_end the model now holds the best checkpoint (or the last, if none was saved).
        trainer.save_model(str(output_dir))
        model.eval()
        with trainer.accelerator.autocast():
            test = evaluate(
                data=data,
                split="test",
                max_len=max_len,
                batch_size=cfg.eval_batch_size,
                device=args.device,
                per_user=True,
                progress=True,
                **ranking(model, trainer.precision, args.device, data.num_rows("test")),
            )
        ranks = test.pop("ranks")
        test["best_step"] = _best_step(trainer)
        test.update(_seconds(trainer, test["best_step"], train_seconds), **(extra_metrics or {}))
        test["peak_rss_mb"] = peak_rss_mb()  # this process's own peak memory: training, validation and the test
        if trainer.is_world_process_zero():
            # Per-user ranks allow paired comparisons between models on the same users.
            save_npz(
                output_dir / "test_ranks.npz",
                candidates=np.asarray(ranks["candidates"]),
                full=np.asarray(ranks["full"]),
            )
            save_json(test, output_dir / "test_metrics.json")
            trainer.log({f"test_{k}": v for k, v in flatten(test).items()})
        _end_training(trainer)
        return test


@contextlib.contextmanager
def _opened_run(cfg, run: RunDir, run_config):
    """The run's folder, locked (one run per folder), its settings recorded (run_config.json) and the checkpoint
    to resume from (or None) yielded. A resume that fails before saving a checkpoint of its own leaves the
    recorded settings as they were, so the run's own flags still resume it."""
    output_dir = run.path
    with run_lock(output_dir):
        run_config, checkpoint = _resume_point(cfg, output_dir, run_config, run.resume)
        output_dir.mkdir(parents=True, exist_ok=True)
        config_file = output_dir / "run_config.json"
        before = config_file.read_bytes() if checkpoint is not None and config_file.is_file() else None
        save_json(run_config, config_file)
        try:
            yield checkpoint
        except BaseException:
            if before is not None and newest_complete_checkpoint(output_dir) == checkpoint:
                config_file.write_bytes(before)
            raise


def _resume_point(cfg, output_dir, run_config, mode) -> tuple:
    """(the run_config to record, the checkpoint to resume from or None): a resume with other settings is
    refused unless forced (then the changes are recorded), and one onto another dataset always."""
    # What "auto" became on this machine, and the machine, so results can say how they were made.
    run_config = json.loads(
        json.dumps(
            {**run_config, "precision": resolve_precision(cfg.precision), "hardware": hardware()}, default=jsonable
        )
    )
    checkpoint = newest_complete_checkpoint(output_dir) if mode != "no" else None
    if mode != "no" and checkpoint is None:
        log.info("no complete checkpoint in %s to resume from: starting fresh", output_dir)
    if checkpoint is not None:
        previous = output_dir / "run_config.json"
        changes = settings_changed(load_json(previous) if previous.is_file() else {}, run_config)
        other_data = [c for c in changes if c.split(":")[0].endswith(("data_fingerprint", "num_items"))]
        if other_data:  # its weights are another catalogue's: nothing can continue them, force or not
            raise CheckpointError(
                f"{output_dir}: {checkpoint.name} was trained on another dataset ({other_data[0]}); "
                f"train this one in a new --output_dir"
            )
        if changes and mode != "force":
            raise CheckpointError(
                f"{output_dir}: cannot resume {checkpoint.name} with other settings ("
                f"{'; '.join(changes[:4])}{' ...' if len(changes) > 4 else ''}); give the run's own "
                f"flags, a new --output_dir, or --resume force"
            )
        if changes:
            log.warning("resuming %s with changed settings (--resume force): %s", checkpoint, "; ".join(changes))
            run_config["resumed_with_changes"] = changes
    return run_config, checkpoint


def _end_training(trainer):
    """Tear the process group down while every rank is alive (left to interpreter exit, gloo's threads can abort
    one rank: "terminate called without an active exception"), and only after the DDP wrapper is gone: a DDP
    reducer freed later, by the garbage collector while it holds the GIL, waits on a gloo thread that waits on
    the GIL (the two-process test hung so about one run in six)."""
    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()
    trainer.model_wrapped = trainer.model  # the Trainer's and Accelerate's references to the DDP wrapper
    accelerator.free_memory()  # drops Accelerate's lists of prepared objects, then collects the garbage
    accelerator.end_training()


def _seconds(trainer, best_step, train_seconds) -> dict:
    """Training wall-clock seconds in all and up to the best checkpoint's validation (this process's; a
    resumed run counts from its restart)."""
    times = {e["step"]: e["eval_train_seconds"] for e in trainer.state.log_history if "eval_train_seconds" in e}
    return {"train_seconds": train_seconds, "seconds_to_best": times.get(best_step)}


def _best_step(trainer):
    ckpt = trainer.state.best_model_checkpoint
    return int(os.path.basename(ckpt).split("-")[-1]) if ckpt else trainer.state.global_step
