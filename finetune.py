"""Train the teacher: E-LLMRec on the first M layers of a pretrained LM with LoRA (paper §3).

    python finetune.py --data data/ml-100k --item_embedding out/main/item_embedding.pkl \\
        --base_model smollm2-135m --num_layers 8 --output_dir out/teacher
"""

import json

import fire

from slmrec.data import PreparedData
from slmrec.embeddings import file_digest, load_item_embedding
from slmrec.model import INSTRUCTION, RESPONSE, ELLMRec, ELLMRecConfig, NextItemDataset
from slmrec.training import TrainConfig, fit_and_test
from slmrec.utils import is_main_process, seed_everything, setup_logging

# Small-budget defaults measured on ml-100k with SmolLM2 (SPEC §2): zero-initialised head, lr 2e-3, batch 16.
TEACHER_TRAIN = dict(max_steps=600, batch_size=16, eval_batch_size=64, learning_rate=2e-3, lr_scheduler="cosine",
                     warmup_steps=50, eval_steps=100, logging_steps=10)


def build(data, item_embedding, base_model, num_layers, max_len, lora_r, lora_alpha, lora_dropout, lora_targets,
          dtype, quantization, instruction=INSTRUCTION, response=RESPONSE):
    """(ELLMRec, its config) on a prepared dataset; the embeddings are checked against the dataset first."""
    table = load_item_embedding(item_embedding, data.num_items)
    targets = lora_targets.split(",") if isinstance(lora_targets, str) else list(lora_targets)
    cfg = ELLMRecConfig(base_model=base_model, num_layers=num_layers, max_len=max_len, lora_r=lora_r,
                        lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_targets=targets,
                        instruction=instruction, response=response, dtype=dtype, quantization=quantization,
                        data_fingerprint=data.fingerprint, embedding_digest=file_digest(item_embedding))
    return ELLMRec(cfg, table), cfg


def main(data: str, item_embedding: str, output_dir: str, base_model: str = "smollm2-135m", num_layers: int = 8,
         max_len: int = 50, max_examples_per_user: int = None, lora_r: int = 16, lora_alpha: int = 16,
         lora_dropout: float = 0.05, lora_targets: str = "gate_proj,up_proj,down_proj", dtype: str = "auto",
         quantization: str = None, instruction: str = INSTRUCTION, response: str = RESPONSE, resume: bool = False,
         **train):
    """Extra flags are TrainConfig fields (slmrec/training.py): --max_steps, --eval_steps, --learning_rate,
    --batch_size, --seed, ... Defaults: TEACHER_TRAIN above."""
    setup_logging()
    cfg = TrainConfig(**{**TEACHER_TRAIN, **train})
    seed_everything(cfg.seed)
    dataset = PreparedData(data)
    model, model_cfg = build(dataset, item_embedding, base_model, num_layers, max_len, lora_r, lora_alpha,
                             lora_dropout, lora_targets, dtype, quantization, instruction, response)
    examples = NextItemDataset(dataset, max_len, max_examples_per_user)
    run_config = {"script": "finetune.py", "data": data, "item_embedding": item_embedding,
                  "max_examples_per_user": max_examples_per_user, "train_examples": len(examples),
                  "model": model_cfg, "train": cfg}
    metrics = fit_and_test(model, dataset, examples, cfg, output_dir, max_len, run_config, resume=resume)
    if is_main_process():
        print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    fire.Fire(main)
