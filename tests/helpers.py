"""What several test modules share: the tiny training budget, a tiny E-LLMRec, a student beside its teacher."""

import torch
import torch.nn.functional as F

from slmrec.backbone import load_backbone
from slmrec.distill import student_config
from slmrec.model import ELLMRec, ELLMRecConfig, load_ellmrec

SHORT_PROMPT = dict(instruction="History:", response="Next:")
# fp32: scores compared across runs must not depend on whether this CPU has bf16.
TINY_TRAIN = dict(
    num_layers=4,
    max_len=6,
    batch_size=8,
    eval_batch_size=16,
    max_steps=4,
    eval_steps=2,
    logging_steps=2,
    warmup_steps=0,
    precision="fp32",
    **SHORT_PROMPT,
)


def item_loss(scores, labels):
    """The plain item loss, which the model computes without its scores (losses.frozen_item_loss): cross-entropy
    over scores [n, items + 1] whose column 0 (padding) is never a prediction."""
    return F.cross_entropy(scores[:, 1:], labels - 1)


def tiny_model(lm_dir, num_items=20, num_layers=4, **kw):
    table = torch.randn(num_items + 1, 8, generator=torch.Generator().manual_seed(1))
    cfg = ELLMRecConfig(base_model=str(lm_dir), num_layers=num_layers, max_len=6, **SHORT_PROMPT, **kw)
    return ELLMRec(cfg, table)


def student_and_teacher(tiny_dataset, tiny_teacher, dcfg, num_layers=4):
    teacher = load_ellmrec(tiny_teacher, tiny_dataset)
    for p in teacher.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    student = ELLMRec(student_config(teacher.cfg, num_layers, dcfg), teacher.item_embedding)
    with torch.no_grad():  # heads away from zero, so every gradient is non-trivial
        for head in [student.w_out, *student.adapters]:
            head.weight.normal_(0, 0.1)
    return teacher, student.train()


PROMPT = dict(instruction="History: a b", response="Next:")


def random_ellmrec(num_items, lm=None, fingerprint="", readout="last_item", num_layers=4, max_len=6):
    """An E-LLMRec with non-zero LoRA and heads, as after training (random:tiny unless lm names a directory)."""
    base = str(lm) if lm else "random:tiny"
    torch.manual_seed(0)  # the biases' initialisation
    table = torch.randn(num_items + 1, 8, generator=torch.Generator().manual_seed(1))
    cfg = ELLMRecConfig(
        base_model=base,
        num_layers=num_layers,
        max_len=max_len,
        readout=readout,
        data_fingerprint=fingerprint,
        lora_dropout=0.0,
        **PROMPT,
    )
    model = ELLMRec(cfg, table, backbone=None if lm else load_backbone(base, num_layers))
    g = torch.Generator().manual_seed(2)
    for p in model.parameters():
        if p.requires_grad and p.dim() > 1:
            torch.nn.init.normal_(p, std=0.3, generator=g)
    return model.eval()
