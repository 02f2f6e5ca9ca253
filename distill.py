"""Train the SLMRec student: N layers distilled from a trained M-layer teacher (paper §4).

    python distill.py --teacher out/teacher --data data/ml-100k --output_dir out/student --num_layers 4
"""

import json
from pathlib import Path

import fire

from slmrec.data import PreparedData
from slmrec.distill import DistillConfig, DistillTrainer, load_teacher, student_config
from slmrec.model import ELLMRec, NextItemDataset
from slmrec.training import TrainConfig, fit_and_test, load_checkpoint_files, load_trained_weights
from slmrec.utils import is_main_process, seed_everything, setup_logging

from finetune import TEACHER_TRAIN


def main(teacher: str, data: str, output_dir: str, num_layers: int = 4, blocks: int = 4, lambda_cos: float = 1.0,
         lambda_norm: float = 0.1, lambda_ms: float = 1.0, lambda_kl: float = 0.0, temperature: float = 1.0,
         norm_variant: str = "squared", kd_mode: str = "offline", max_examples_per_user: int = None,
         lora_r: int = None, lora_alpha: int = None, resume: bool = False, **train):
    """The student takes the teacher's base LM, prompt, LoRA targets and item embeddings; extra flags are
    TrainConfig fields (--max_steps, --eval_steps, --learning_rate, --batch_size, --seed, ...)."""
    setup_logging()
    dcfg = DistillConfig(teacher, kd_mode, blocks, lambda_cos, lambda_norm, lambda_ms, lambda_kl, temperature,
                         norm_variant)
    dcfg.check()
    cfg = TrainConfig(**{**TEACHER_TRAIN, **train})
    seed_everything(cfg.seed)
    dataset = PreparedData(data)
    teacher_model = load_teacher(dcfg, dataset, num_layers)
    overrides = {k: v for k, v in {"lora_r": lora_r, "lora_alpha": lora_alpha}.items() if v is not None}
    scfg = student_config(teacher_model.cfg, num_layers, dcfg, **overrides)
    student = ELLMRec(scfg, teacher_model.item_embedding)
    if resume and kd_mode == "online":
        _restore_online_teacher(teacher_model, output_dir)
    examples = NextItemDataset(dataset, scfg.max_len, max_examples_per_user)
    run_config = {"script": "distill.py", "data": data, "distill": dcfg, "model": scfg, "train": cfg,
                  "max_examples_per_user": max_examples_per_user, "train_examples": len(examples)}
    metrics = fit_and_test(student, dataset, examples, cfg, output_dir, scfg.max_len, run_config, resume=resume,
                           trainer_cls=DistillTrainer, teacher=teacher_model, distill=dcfg)
    if is_main_process():
        print(json.dumps(metrics, indent=2))


def _restore_online_teacher(teacher, output_dir):
    """On resume, online KD's teacher continues from the newest checkpoint's copy."""
    ckpts = sorted(Path(output_dir).glob("checkpoint-*/teacher"), key=lambda p: int(p.parent.name.split("-")[1]))
    if ckpts:
        _, state = load_checkpoint_files(ckpts[-1], "ellmrec")
        load_trained_weights(teacher, state, ckpts[-1])


if __name__ == "__main__":
    fire.Fire(main)
