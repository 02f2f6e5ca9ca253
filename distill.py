"""Train the SLMRec student: N layers distilled from a trained M-layer teacher (paper §4).

    python distill.py --teacher out/teacher --output_dir out/student --num_layers 4

--data defaults to the dataset the teacher was trained on (its run_config.json); a dataset the teacher was
not trained on is refused.
"""

import json
import logging
import os
import time
from pathlib import Path


from slmrec.cli import run
from slmrec.data import PreparedData, is_prepared
from slmrec.errors import DataError
from slmrec.distill import DistillConfig, DistillTrainer, caches_teacher, load_teacher, student_config, teacher_states
from slmrec.examples import ExampleConfig, Indexed, training_examples
from slmrec.losses import block_pairs
from slmrec.model import ELLMRec
from slmrec.checkpoints import (
    load_checkpoint_config,
    load_checkpoint_files,
    load_trained_weights,
    newest_complete_checkpoint,
    open_run_dir,
    trained_on,
)
from slmrec.training import ELLMREC_TRAIN, TrainConfig, fit_and_test
from slmrec.errors import FlagError
from slmrec.files import run_lock
from slmrec.flags import split_flags
from slmrec.runtime import is_main_process, seed_everything, setup_logging
from slmrec.machine import compute_device

log = logging.getLogger(__name__)


def main(
    teacher: str,
    data: str = None,
    output_dir: str = None,
    num_layers: int = 4,
    lora_r: int = None,
    lora_alpha: int = None,
    resume: str = "false",
    **flags,
):
    """The student takes the teacher's base LM, prompt, readout, LoRA targets and item embeddings. Other flags
    are the fields of DistillConfig (slmrec/distill.py: --blocks, --lambda_cos, --lambda_norm, --lambda_ms,
    --norm_variant, --feature_positions, --kd_mode, ...), ExampleConfig (slmrec/examples.py: --objective,
    --sampling) and TrainConfig (slmrec/training.py: --epochs, --patience, --learning_rate, --seed, ...;
    defaults ELLMREC_TRAIN there)."""
    setup_logging()
    if output_dir is None:
        raise FlagError("--output_dir is required: the folder the student is trained into")
    dflags, eflags, tflags = split_flags(flags, DistillConfig, ExampleConfig, TrainConfig)
    dcfg = DistillConfig(teacher, **dflags)
    examples_cfg = ExampleConfig(**eflags)
    caches_teacher(dcfg, examples_cfg)  # a cache insisted on where it cannot be exact: refused before any work
    cfg = TrainConfig(**{**ELLMREC_TRAIN, **tflags})
    seed_everything(cfg.seed)
    data = data or teacher_dataset(teacher)
    run_dir = open_run_dir(output_dir, resume, reads=[teacher, data])
    dataset = PreparedData(data)
    teacher_model = load_teacher(dcfg, dataset, num_layers, precision=cfg.precision)
    overrides = {k: v for k, v in {"lora_r": lora_r, "lora_alpha": lora_alpha}.items() if v is not None}
    scfg = student_config(teacher_model.cfg, num_layers, dcfg, **overrides)
    student = ELLMRec(scfg, teacher_model.item_embedding, precision=cfg.precision)
    # --compile: the live teacher's forward is part of the step too
    student.compile_training = teacher_model.compile_training = cfg.compile
    if run_dir.resume != "no" and dcfg.kd_mode == "online":
        _restore_online_teacher(teacher_model, output_dir)
    examples = training_examples(dataset, scfg.max_len, examples_cfg)
    run_config = {
        "script": "distill.py",
        "data": data,
        "distill": dcfg,
        "model": scfg,
        "train": cfg,
        "examples": examples_cfg,
        "train_examples": len(examples),
    }
    planned = (
        cfg.max_steps * cfg.batch_size * int(os.environ.get("WORLD_SIZE", "1"))
        if cfg.max_steps > 0
        else cfg.epochs * len(examples)
    )
    with run_lock(output_dir):  # one run per folder, from before the teacher's states are computed
        states, extra = None, {}
        if caches_teacher(dcfg, examples_cfg, len(examples), planned):  # the frozen teacher runs once
            device = compute_device()
            pairs = block_pairs(teacher_model.cfg.num_layers, num_layers, dcfg.blocks)
            t = time.time()
            states = teacher_states(
                dcfg,
                teacher_model.to(device),
                dataset,
                examples,
                pairs,
                cfg.precision,
                output_dir,
                cfg.eval_batch_size,
                device,
            )
            if states is not None:  # else too large for the budget or the disk: the live teacher
                extra = {
                    "teacher_states": str(states.path),
                    "teacher_states_seconds": time.time() - t,
                    "teacher_states_build_seconds": states.meta["build_seconds"],
                }
                examples = Indexed(examples)
        metrics = fit_and_test(
            student,
            dataset,
            examples,
            cfg,
            run_dir,
            scfg.max_len,
            run_config,
            trainer_cls=DistillTrainer,
            teacher=teacher_model,
            distill=dcfg,
            states=states,
            extra_metrics=extra,
        )
    if is_main_process():
        print(json.dumps(metrics, indent=2))


def teacher_dataset(teacher) -> str:
    """The dataset the teacher was trained on, which must still be there as it was (load_teacher compares its
    fingerprint with the teacher's)."""
    load_checkpoint_config(teacher, "ellmrec")  # a teacher that is not one: its own one-line error first
    data = trained_on(teacher)
    if not is_prepared(Path(data)):
        raise DataError(
            f"the teacher {teacher} was trained on {data}, which is not a prepared dataset any more "
            f"(moved, or run from another folder): pass --data"
        )
    log.info("data: %s, the teacher's dataset", data)
    return data


def _restore_online_teacher(teacher, output_dir):
    """On resume, online KD's teacher continues from the copy in the checkpoint the student resumes from."""
    ckpt = newest_complete_checkpoint(output_dir)
    if ckpt is not None and (ckpt / "teacher").is_dir():
        _, state = load_checkpoint_files(ckpt / "teacher", "ellmrec")
        load_trained_weights(teacher, state, ckpt / "teacher")


if __name__ == "__main__":
    run(main, configs=(DistillConfig, ExampleConfig, TrainConfig), defaults=ELLMREC_TRAIN)
