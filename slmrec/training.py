"""transformers.Trainer wired to the project's evaluator and checkpoint format, shared by every model."""

import functools
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments

from .data import cache_dir
from .metrics import evaluate, flatten
from .utils import FlagError, coerce, hardware, jsonable, load_json, save_json

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "slmrec_config.json"  # not config.json: the Trainer reads that one as a transformers config


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


# The LM-based models' (teacher and student) training defaults over TrainConfig's: 4 epochs, the cosine
# schedule reaching zero at the end of the 4th, validation once per epoch, the best checkpoint by validation
# MRR and an early stop after 2 validations without a better one; batch 16, AdamW lr 2e-3, 50 warm-up steps.
# Chosen on ml-100k's validation split with SmolLM2 (README "Choosing the defaults"): every curve peaked at
# epoch 2-3 and declined after, and decaying the rate by epoch 4 gave the best peak.
ELLMREC_TRAIN = dict(epochs=4, patience=2, batch_size=16, eval_batch_size=64, learning_rate=2e-3,
                     lr_scheduler="cosine", warmup_steps=50, logging_steps=10)


# SASRec's, GRU4Rec's and BERT4Rec's over TrainConfig's: early stopping on validation MRR, in fp32 (small models:
# bf16 would save little and change their numbers).
SEQREC_TRAIN = dict(epochs=200, patience=20, precision="fp32")


@functools.lru_cache(maxsize=None)
def native_bf16() -> bool:
    """Whether bf16 autocast is the faster precision here: a GPU with bf16, or a CPU whose bf16 matrix products
    measure faster than its fp32 ones. CPU flags alone mislead: a 2-core AMD EPYC (Zen 5, AVX512-BF16)
    multiplies about 2x faster in bf16 and trains 1.7x faster, an Intel Xeon whose AMX is hidden by the
    hypervisor (AVX512-BF16 listed, model 207) multiplies 0.55x as fast in bf16 as in fp32 (measured, README).
    The measurement is kept in the project cache per CPU and torch version, so every run on a machine decides
    alike (a resumed or compared run never flips precision on timing noise)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to ask, stay in fp32
        return False
    flags = info.split()
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        return False
    head = info.split("\n\n")[0]
    key = hashlib.sha256(f"{head.split('flags')[0]}{sorted(set(flags))}{torch.__version__}".encode()).hexdigest()[:16]
    path = cache_dir() / "bf16_speed.json"
    known = load_json(path) if path.is_file() else {}
    if key not in known:
        known[key] = {"bf16_over_fp32": _bf16_speedup(), "cpu": _cpu_name(head), "torch": torch.__version__}
        save_json(known, path)
    return known[key]["bf16_over_fp32"] >= BF16_MIN_SPEEDUP


BF16_MIN_SPEEDUP = 1.2  # bf16 must be clearly faster: it also rounds


def _cpu_name(head):
    return next((line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("model name")), "")


def _bf16_speedup(reps=20) -> float:
    """fp32 time over bf16 time of a matrix product of an LM layer's shape (SmolLM2's MLP, 800 rows)."""
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(800, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
        for _ in range(3):
            a @ b
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        times[dtype] = time.perf_counter() - t
    return times[torch.float32] / times[torch.bfloat16]


def resolve_precision(precision: str) -> str:
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise FlagError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


def compute_dtype(precision: str):
    """The torch dtype autocast computes in for a precision (None: fp32, no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(precision))


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


def trainable_state_dict(model):
    """What training changes, plus persistent buffers (the frozen item table): the frozen LM is not saved,
    it is rebuilt from its source named in the checkpoint config."""
    state = model.state_dict()
    keep = {k for k, p in model.named_parameters() if p.requires_grad}
    keep |= {k for k, _ in model.named_buffers()} & state.keys()
    return {k: state[k].detach().contiguous() for k in state if k in keep}


def save_model(model, output_dir):
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(trainable_state_dict(model), output_dir / WEIGHTS, metadata={"format": "pt"})
    save_json(model.checkpoint_config(), output_dir / MODEL_CONFIG)


class CheckpointError(ValueError):
    pass


class NonFiniteError(ValueError):
    pass


def check_finite(terms: dict, step):
    """Stop training at the first non-finite loss term, naming the step and the term."""
    for name, value in terms.items():
        if not torch.isfinite(value).all():
            raise NonFiniteError(f"step {step}: the {name} loss is {value.item()}: training diverged (try a lower "
                                 f"--learning_rate) or the inputs hold non-finite values; nothing was saved from it")


def load_checkpoint_config(checkpoint_dir, model_type) -> dict:
    """The config of a checkpoint written by save_model, checked for its files and model type."""
    d = Path(checkpoint_dir)
    if not (d / WEIGHTS).is_file() or not (d / MODEL_CONFIG).is_file():
        raise CheckpointError(f"{d}: not a checkpoint of this project (needs {WEIGHTS} and {MODEL_CONFIG})")
    cfg = load_json(d / MODEL_CONFIG)
    found = cfg.pop("model_type", None)
    if found != model_type:
        raise CheckpointError(f"{d}: holds a {found!r} model, expected {model_type!r}")
    return cfg


def load_checkpoint_files(checkpoint_dir, model_type):
    """(config dict, state dict) of a checkpoint written by save_model."""
    cfg = load_checkpoint_config(checkpoint_dir, model_type)
    return cfg, safetensors.torch.load_file(Path(checkpoint_dir) / WEIGHTS, device="cpu")


def load_trained_weights(model, state, where):
    """Load a checkpoint's weights (trained ones only, frozen ones come from their source): anything
    unexpected, or a trainable weight missing, means the checkpoint does not fit this model."""
    result = model.load_state_dict(state, strict=False)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trainable & set(result.missing_keys))
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{where}: weights do not fit the model (unexpected: {result.unexpected_keys[:3]}, "
                              f"missing: {missing[:3]})")


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
        log.info("validation | epoch %.2f step %d | MRR %.4f NDCG@10 %.4f HR@10 %.4f | best MRR %.4f | "
                 "train loss %s | %.0fs", state.epoch or 0, state.global_step, m.get("MRR", float("nan")),
                 m.get("NDCG@10", float("nan")), m.get("HR@10", float("nan")), best, loss, m.get("train_seconds", 0))


class RecTrainer(Trainer):
    """Evaluates with the project's evaluator on the stored validation candidates; saves small checkpoints."""

    def __init__(self, *args, data, max_len, **kwargs):
        super().__init__(*args, **kwargs)
        self.data, self.max_len = data, max_len
        self.started = time.time()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        check_finite({"item": out[0] if return_outputs else out}, self.state.global_step + 1)
        return out

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        model = self.model
        was_training = model.training
        model.eval()
        with self.accelerator.autocast():  # evaluate in the training precision
            result = evaluate(model.score, self.data, "valid", self.max_len, self.args.per_device_eval_batch_size,
                              self.args.device)
        model.train(was_training)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in flatten(result).items()}
        # Wall-clock seconds of this process's training so far, validations included: the time to the best
        # checkpoint (test_metrics.json) comes from here.
        metrics[f"{metric_key_prefix}_train_seconds"] = time.time() - self.started
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # Checkpoints hold only trained weights (see save_model): the Trainer's own loader would warn about
        # every frozen weight and accept a checkpoint of another model.
        state = safetensors.torch.load_file(Path(resume_from_checkpoint) / WEIGHTS, device="cpu")
        load_trained_weights(self.accelerator.unwrap_model(model or self.model), state, resume_from_checkpoint)

    def _load_best_model(self):
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _save(self, output_dir=None, state_dict=None):
        if self.args.should_save:
            save_model(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)


def resume_mode(value) -> str:
    """--resume: false (start afresh), true (continue from the newest complete checkpoint; refused if the run's
    settings changed) or force (continue anyway; the changes are recorded in run_config.json). Returns
    "no", "yes" or "force"; true and false are spelt as for any boolean flag (utils.coerce)."""
    if str(value).lower() == "force":
        return "force"
    try:
        return "yes" if coerce("resume", value, bool) else "no"
    except FlagError:
        raise FlagError(f"--resume must be true, false or force, not {value!r}") from None


CHECKPOINT_FILES = (WEIGHTS, "optimizer.pt", "scheduler.pt", "trainer_state.json")


def newest_complete_checkpoint(output_dir):
    """The newest checkpoint-* holding every file the Trainer writes (trainer_state.json, written last, must
    parse): one a kill interrupted while it was being written is skipped, with a warning."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for ckpt in sorted(found, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        try:
            complete = all((ckpt / f).is_file() for f in CHECKPOINT_FILES) and \
                isinstance(load_json(ckpt / "trainer_state.json"), dict)
        except ValueError:  # a half-written trainer_state.json
            complete = False
        if complete:
            return ckpt
        log.warning("skipping %s: incomplete (interrupted while it was being saved)", ckpt)
    return None


# The budget a resumed run may change (to train for longer); any other change is refused without --resume force.
EXTENDABLE = ("train.max_steps", "train.epochs", "train.patience")
# Where the run happens and paths to the same files (their fingerprints and digests are compared) may change.
UNCOMPARED = ("hardware", "data", "item_embedding", "resumed_with_changes")


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def settings_changed(previous: dict, current: dict) -> list:
    """'setting: before -> now' for every setting of run_config.json that a resumed run would change."""
    before, now = _flat(previous), _flat(current)
    keys = sorted((before.keys() | now.keys()) - set(EXTENDABLE))
    return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys
            if k.split(".")[0] not in UNCOMPARED and before.get(k) != now.get(k)]


def check_run_dir(output_dir: Path):
    """A training run writes into a new or empty folder, or one of this project's runs (a run_config.json, a
    checkpoint, or reproduce.py's command.json): never among other files."""
    ours = ("run_config.json", "command.json", "checkpoint-*")
    if output_dir.exists() and (not output_dir.is_dir() or (any(output_dir.iterdir()) and not any(
            any(output_dir.glob(name)) for name in ours))):
        raise CheckpointError(f"--output_dir {output_dir} exists and holds files this project did not write: "
                              f"choose a new or empty directory")


def fit_and_test(model, data, train_dataset, cfg: TrainConfig, output_dir, max_len, run_config, resume="no",
                 trainer_cls=RecTrainer, extra_metrics=None, **trainer_kwargs) -> dict:
    """Train with best-by-validation-MRR checkpointing, save the best model to output_dir, write
    output_dir/test_metrics.json (candidates at top level, full ranking under "full", and extra_metrics: what
    the caller measured before training). resume: see resume_mode."""
    output_dir = Path(output_dir)
    mode = resume_mode(resume)
    check_run_dir(output_dir)
    # What "auto" became on this machine, and the machine, so results can say how they were made.
    run_config = json.loads(json.dumps({**run_config, "precision": resolve_precision(cfg.precision),
                                        "hardware": hardware()}, default=jsonable))
    checkpoint = newest_complete_checkpoint(output_dir) if mode != "no" else None
    if mode != "no" and checkpoint is None:
        log.info("no complete checkpoint in %s to resume from: starting fresh", output_dir)
    if checkpoint is not None:
        previous = output_dir / "run_config.json"
        changes = settings_changed(load_json(previous) if previous.is_file() else {}, run_config)
        if changes and mode != "force":
            raise CheckpointError(f"{output_dir}: cannot resume {checkpoint.name} with other settings ("
                                  f"{'; '.join(changes[:4])}{' ...' if len(changes) > 4 else ''}); give the run's own "
                                  f"flags, a new --output_dir, or --resume force")
        if changes:
            log.warning("resuming %s with changed settings (--resume force): %s", checkpoint, "; ".join(changes))
            run_config["resumed_with_changes"] = changes
    output_dir.mkdir(parents=True, exist_ok=True)
    save_json(run_config, output_dir / "run_config.json")
    args = training_arguments(cfg, output_dir, len(train_dataset))
    callbacks = [ValidationLine()] + ([EarlyStoppingCallback(cfg.patience)] if cfg.patience > 0 else [])
    # The Trainer insists on an eval_dataset; RecTrainer.evaluate ignores it and ranks data's validation split.
    trainer = trainer_cls(model=model, args=args, train_dataset=train_dataset, eval_dataset=train_dataset,
                          data=data, max_len=max_len, callbacks=callbacks, **trainer_kwargs)
    log.info("training on %s, %d process(es), %d examples, validation every %d steps", args.device,
             args.world_size, len(train_dataset), args.eval_steps)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = time.time() - trainer.started
    # With load_best_model_at_end the model now holds the best checkpoint (or the last, if none was saved).
    trainer.save_model(str(output_dir))
    model.eval()
    with trainer.accelerator.autocast():
        test = evaluate(model.score, data, "test", max_len, cfg.eval_batch_size, args.device, per_user=True)
    ranks = test.pop("ranks")
    test["best_step"] = _best_step(trainer)
    test.update(_seconds(trainer, test["best_step"], train_seconds), **(extra_metrics or {}))
    if trainer.is_world_process_zero():
        # Per-user ranks allow paired comparisons between models on the same users.
        np.savez(output_dir / "test_ranks.npz", candidates=np.asarray(ranks["candidates"]),
                 full=np.asarray(ranks["full"]))
        save_json(test, output_dir / "test_metrics.json")
        trainer.log({f"test_{k}": v for k, v in flatten(test).items()})
    # Tear the process group down while every rank is alive: left to interpreter exit, gloo's threads
    # can abort one rank ("terminate called without an active exception") after a successful run.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return test


def _seconds(trainer, best_step, train_seconds) -> dict:
    """Training wall-clock seconds in all and up to the best checkpoint's validation (this process's; a
    resumed run counts from its restart)."""
    times = {e["step"]: e["eval_train_seconds"] for e in trainer.state.log_history if "eval_train_seconds" in e}
    return {"train_seconds": train_seconds, "seconds_to_best": times.get(best_step)}


def _best_step(trainer):
    ckpt = trainer.state.best_model_checkpoint
    return int(os.path.basename(ckpt).split("-")[-1]) if ckpt else trainer.state.global_step

