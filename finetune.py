"""Train the teacher: E-LLMRec on the first M layers of a pretrained LM with LoRA (paper §3).

    python finetune.py --data data/ml-100k --item_embedding out/main/item_embedding.pkl \\
        --base_model smollm2-135m --num_layers 8 --output_dir out/teacher
"""

import json

import fire

from slmrec.data import PreparedData
from slmrec.embeddings import file_digest, load_item_embedding
from slmrec.examples import ExampleConfig, training_examples
from slmrec.model import INSTRUCTION, RESPONSE, ELLMRec, ELLMRecConfig
from slmrec.training import ELLMREC_TRAIN, TrainConfig, compute_dtype, fit_and_test
from slmrec.utils import is_main_process, seed_everything, setup_logging


def build(data, item_embedding, base_model, num_layers, max_len, lora_r, lora_alpha, lora_dropout, lora_targets,
          dtype, quantization, instruction=INSTRUCTION, response=RESPONSE, readout="last_item"):
    """(ELLMRec, its config) on a prepared dataset; the embeddings are checked against the dataset first."""
    table = load_item_embedding(item_embedding, data.num_items)
    targets = lora_targets.split(",") if isinstance(lora_targets, str) else list(lora_targets)
    cfg = ELLMRecConfig(base_model=base_model, num_layers=num_layers, max_len=max_len, lora_r=lora_r,
                        lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_targets=targets,
                        instruction=instruction, response=response, readout=readout, dtype=dtype, quantization=quantization,
                        data_fingerprint=data.fingerprint, embedding_digest=file_digest(item_embedding))
    return ELLMRec(cfg, table), cfg


def main(data: str, item_embedding: str, output_dir: str, base_model: str = "smollm2-135m", num_layers: int = 8,
         max_len: int = 50, readout: str = "last_item", objective: str = "every_position", sampling: str = "target",
         max_examples_per_user: int = None, lora_r: int = 16, lora_alpha: int = 16, lora_dropout: float = 0.05,
         lora_targets: str = "gate_proj,up_proj,down_proj", dtype: str = "auto", quantization: str = None,
         instruction: str = INSTRUCTION, response: str = RESPONSE, resume: bool = False, **train):
    """readout: last_item or response (the paper's). objective: every_position or last_target (the paper's,
    with --sampling target|user); see slmrec/examples.py. Extra flags are TrainConfig fields
    (slmrec/training.py): --epochs, --patience, --max_steps, --eval_steps, --learning_rate, --batch_size,
    --seed, ... Defaults: ELLMREC_TRAIN there."""
    setup_logging()
    examples_cfg = ExampleConfig(objective, sampling, max_examples_per_user)
    examples_cfg.check()
    cfg = TrainConfig(**{**ELLMREC_TRAIN, **train})
    seed_everything(cfg.seed)
    dataset = PreparedData(data)
    model, model_cfg = build(dataset, item_embedding, base_model, num_layers, max_len, lora_r, lora_alpha,
                             lora_dropout, lora_targets, dtype, quantization, instruction, response, readout)
    model.cast_frozen(compute_dtype(cfg.precision))  # exact: autocast would cast them at every call
    examples = training_examples(dataset, max_len, examples_cfg)
    run_config = {"script": "finetune.py", "data": data, "item_embedding": item_embedding,
                  "examples": examples_cfg, "train_examples": len(examples), "model": model_cfg, "train": cfg}
    metrics = fit_and_test(model, dataset, examples, cfg, output_dir, max_len, run_config, resume=resume)
    if is_main_process():
        print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    fire.Fire(main)
