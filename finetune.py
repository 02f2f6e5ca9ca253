"""Train the teacher: E-LLMRec on the first M layers of a pretrained LM with LoRA (paper §3).

    python finetune.py --data data/ml-100k --item_embedding out/main/item_embedding.pkl \\
        --base_model smollm2-135m --num_layers 8 --output_dir out/teacher
"""

import dataclasses
import json

from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.embeddings import embedding_digest, load_item_embedding
from slmrec.examples import ExampleConfig, training_examples
from slmrec.model import DERIVED_FIELDS, ELLMRec, ELLMRecConfig
from slmrec.checkpoints import open_run_dir
from slmrec.training import ELLMREC_TRAIN, TrainConfig, fit_and_test
from slmrec.flags import split_flags
from slmrec.runtime import is_main_process, seed_everything, setup_logging


def main(data: str, item_embedding: str, output_dir: str, resume: str = "false", **flags):
    """Flags are the fields of ELLMRecConfig (slmrec/model.py: --base_model, --num_layers, --readout, --lora_r,
    --instruction, ...), ExampleConfig (slmrec/examples.py: --objective, --sampling) and TrainConfig
    (slmrec/training.py: --epochs, --patience, --learning_rate, --batch_size, --seed, ...; defaults
    ELLMREC_TRAIN there). --resume true|false|force: see slmrec/checkpoints.py:resume_mode."""
    setup_logging()
    mflags, eflags, tflags = split_flags(flags, ELLMRecConfig, ExampleConfig, TrainConfig, fixed=DERIVED_FIELDS)
    model_cfg = ELLMRecConfig(**mflags)  # every flag checked before any work
    examples_cfg = ExampleConfig(**eflags)
    cfg = TrainConfig(**{**ELLMREC_TRAIN, **tflags})
    run_dir = open_run_dir(output_dir, resume, reads=[data, item_embedding])
    seed_everything(cfg.seed)
    dataset = PreparedData(data)
    table = load_item_embedding(item_embedding, dataset.num_items, dataset.fingerprint)
    model_cfg = dataclasses.replace(
        model_cfg, data_fingerprint=dataset.fingerprint, embedding_digest=embedding_digest(item_embedding)
    )
    model = ELLMRec(model_cfg, table, precision=cfg.precision)
    model.compile_training = cfg.compile
    examples = training_examples(dataset, model_cfg.max_len, examples_cfg)
    run_config = {
        "script": "finetune.py",
        "data": data,
        "item_embedding": item_embedding,
        "examples": examples_cfg,
        "train_examples": len(examples),
        "model": model_cfg,
        "train": cfg,
    }
    metrics = fit_and_test(model, dataset, examples, cfg, run_dir, model_cfg.max_len, run_config)
    if is_main_process():
        print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    run(main, configs=(ELLMRecConfig, ExampleConfig, TrainConfig), defaults=ELLMREC_TRAIN)
