"""The project's checkpoint format, loading and resume: what a run directory holds and how a run continues.

A checkpoint holds only what training changed (LoRA, heads, adapters) and persistent buffers (the frozen item
table) in `model.safetensors`, with the model's config in `slmrec_config.json`; the frozen LM is rebuilt from
the source the config names. The model modules and the trainers both use this module.
"""

import dataclasses
import logging
import re
from pathlib import Path

import safetensors
import safetensors.torch

from .errors import CheckpointError, FlagError
from .files import LOCK, load_json, save_json, written_whole
from .flags import coerce

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "slmrec_config.json"  # not config.json: the Trainer reads that one as a transformers config


def trainable_state_dict(model):
    """What training changes, plus persistent buffers (the frozen item table): the frozen LM is not saved,
    it is rebuilt from its source named in the checkpoint config."""
    state = model.state_dict()
    keep = {k for k, p in model.named_parameters() if p.requires_grad}
    keep |= {k for k, _ in model.named_buffers()} & state.keys()
    return {k: state[k].detach().contiguous() for k in state if k in keep}


def save_model(model, output_dir):
    output_dir = Path(output_dir)
    with written_whole(output_dir / WEIGHTS) as tmp:
        safetensors.torch.save_file(trainable_state_dict(model), tmp, metadata={"format": "pt"})
    save_json(model.checkpoint_config(), output_dir / MODEL_CONFIG)


def load_checkpoint_config(checkpoint_dir, model_type=None) -> dict:
    """The config of a checkpoint written by save_model, checked for its files and model type (None: any)."""
    d = Path(checkpoint_dir)
    if not (d / WEIGHTS).is_file() or not (d / MODEL_CONFIG).is_file():
        raise CheckpointError(f"{d}: not a checkpoint of this project (needs {WEIGHTS} and {MODEL_CONFIG})")
    cfg = read_model_config(d)
    found = cfg.pop("model_type", None)
    if model_type is not None and found != model_type:
        raise CheckpointError(f"{d}: holds a {found!r} model, expected {model_type!r}")
    return cfg


def read_model_config(checkpoint_dir) -> dict:
    """The checkpoint's slmrec_config.json, or a one-line error when it is damaged."""
    path = Path(checkpoint_dir) / MODEL_CONFIG
    try:
        cfg = load_json(path)
    except ValueError as e:
        raise CheckpointError(f"{path}: damaged ({e}); train the model again, or restore the file") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: damaged (not a JSON object); train the model again, or restore the file")
    return cfg


def load_checkpoint_files(checkpoint_dir, model_type):
    """(config dict, state dict) of a checkpoint written by save_model."""
    cfg = load_checkpoint_config(checkpoint_dir, model_type)
    return cfg, load_weights(Path(checkpoint_dir) / WEIGHTS)


def load_weights(path) -> dict:
    """A safetensors file (no code runs on load), or a one-line error when it is damaged or cut short."""
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except (OSError, ValueError, safetensors.SafetensorError) as e:
        raise CheckpointError(
            f"{path}: damaged or incomplete weights ({e}); train the model again, or restore the file"
        ) from e


def load_trained_weights(model, state, where):
    """Load a checkpoint's weights (trained ones only, frozen ones come from their source): anything
    unexpected, or a trainable weight missing, means the checkpoint does not fit this model."""
    result = model.load_state_dict(state, strict=False)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trainable & set(result.missing_keys))
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{where}: weights do not fit the model (unexpected: {result.unexpected_keys[:3]}, missing: {missing[:3]})"
        )


def resume_mode(value) -> str:
    """--resume: false (start afresh), true (continue from the newest complete checkpoint; refused if the run's
    settings changed) or force (continue anyway; the changes are recorded in run_config.json). Returns
    "no", "yes" or "force"; true and false are spelt as for any boolean flag (flags.coerce)."""
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
            complete = all((ckpt / f).is_file() for f in CHECKPOINT_FILES) and isinstance(
                load_json(ckpt / "trainer_state.json"), dict
            )
        except ValueError:  # a half-written trainer_state.json
            complete = False
        if complete:
            return ckpt
        log.warning("skipping %s: incomplete (interrupted while it was being saved)", ckpt)
    return None


# The budget a resumed run may change (to train for longer); any other change is refused without --resume force.
EXTENDABLE = ("train.max_steps", "train.epochs", "train.patience")
# Where the run happens, whether its step is compiled (the same computation) and paths to the same files (their
# fingerprints and digests are compared) may change.
UNCOMPARED = ("hardware", "train.compile", "data", "item_embedding", "resumed_with_changes")


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def settings_changed(previous: dict, current: dict) -> list:
    """'setting: before -> now' for every setting of run_config.json that a resumed run would change."""
    before, now = _flat(previous), _flat(current)
    keys = sorted((before.keys() | now.keys()) - set(EXTENDABLE))
    return [
        f"{k}: {before.get(k)!r} -> {now.get(k)!r}"
        for k in keys
        if k.split(".")[0] not in UNCOMPARED and k not in UNCOMPARED and before.get(k) != now.get(k)
    ]


def trained_on(checkpoint_dir) -> str:
    """The prepared dataset a run trained on, as its run_config.json names it (the path given to the training
    command, relative to where it ran), for the commands that default to it. A checkpoint-N folder inside a run
    (what the original's users pass as the teacher) is its run's: the run's run_config.json says."""
    path = Path(checkpoint_dir) / "run_config.json"
    run = Path(checkpoint_dir).resolve().parent
    if not path.is_file() and re.fullmatch(r"checkpoint-\d+", Path(checkpoint_dir).resolve().name):
        if (run / "run_config.json").is_file():
            log.info("%s is a checkpoint of the run %s: the dataset its run_config.json names", checkpoint_dir, run)
            path = run / "run_config.json"
    try:
        data = load_json(path).get("data")  # a damaged file is its own one-line error (errors.DamagedFile)
    except (OSError, AttributeError):
        data = None
    if not isinstance(data, str) or not data:
        raise CheckpointError(
            f"{checkpoint_dir}: its run_config.json does not say which dataset it was trained on; pass --data"
        )
    return data


@dataclasses.dataclass(frozen=True)
class RunDir:
    """A training run's output folder, checked once before any work (open_run_dir), and how the run treats what
    is in it: resume "no", "yes" or "force" (resume_mode)."""

    path: Path
    resume: str = "no"


def open_run_dir(output_dir, resume="false", reads=()) -> RunDir:
    """The one check of a run's folder and --resume flag, made by each training script before it loads anything;
    fit_and_test takes the result as it is."""
    mode = resume_mode(resume)
    check_run_dir(Path(output_dir), reads=reads)
    return RunDir(Path(output_dir), mode)


def check_run_dir(output_dir: Path, reads=()):
    """A training run writes into a new or empty folder, or one of this project's runs (a run_config.json, a
    checkpoint, or reproduce.py's command.json): never among other files, and never into, above or inside a
    folder the run reads (`reads`: a teacher, a dataset)."""
    out = Path(output_dir).resolve()
    for r in map(Path, reads):
        r = r.resolve()
        if out == r or out in r.parents or r in out.parents:
            raise CheckpointError(
                f"--output_dir {output_dir} is {'' if out == r else 'inside or above '}{r}, which "
                f"this run reads: choose another output directory"
            )
    ours = ("run_config.json", "command.json", "checkpoint-*", LOCK)
    if output_dir.exists() and (
        not output_dir.is_dir() or (any(output_dir.iterdir()) and not any(any(output_dir.glob(name)) for name in ours))
    ):
        raise CheckpointError(
            f"--output_dir {output_dir} exists and holds files this project did not write: "
            f"choose a new or empty directory"
        )
