"""SLMRec's distillation losses (paper §4, eq. 3-6) on final-position hidden states.

Pair k (k = 1..B) aligns the teacher's state after layer k*M/B with the student's after layer k*N/B.
"""

import torch
import torch.nn.functional as F

from .model import item_loss


def block_pairs(teacher_layers: int, student_layers: int, blocks: int):
    """[(teacher layer, student layer)] for k = 1..B, 1-based; B must divide both depths."""
    if blocks < 1 or teacher_layers % blocks or student_layers % blocks:
        raise ValueError(f"--blocks {blocks} must divide both the teacher's {teacher_layers} layers and the "
                         f"student's {student_layers}")
    m, n = teacher_layers // blocks, student_layers // blocks
    return [(k * m, k * n) for k in range(1, blocks + 1)]


def cosine_loss(teacher_states, student_states):
    """D_cos = 1/B sum_k (1 - cos(h_t, h_s)), averaged over the batch (eq. 3 as a loss)."""
    terms = [1 - F.cosine_similarity(t, s, dim=-1).mean() for t, s in zip(teacher_states, student_states)]
    return torch.stack(terms).mean()


def norm_loss(teacher_states, student_states, squared=True):
    """D_norm = 1/B sum_k ||h_t - h_s||^2 (eq. 4), averaged over the batch; squared=False gives the
    original code's unsquared norm."""
    terms = []
    for t, s in zip(teacher_states, student_states):
        d = (t - s).pow(2).sum(-1)
        terms.append((d if squared else d.sqrt()).mean())
    return torch.stack(terms).mean()


def multi_supervision_loss(adapter_scores, labels):
    """L_ms = 1/(B-1) sum_{k<B} CE(y, W_a^(k) h_s^(kn) E^T) (eq. 5): the item loss of each adapter head."""
    return torch.stack([item_loss(s, labels) for s in adapter_scores]).mean()


def logit_kd_loss(teacher_scores, student_scores, temperature=1.0):
    """KL(teacher || student) between the item distributions at a temperature (padding left out), x T^2."""
    t = F.log_softmax(teacher_scores[:, 1:] / temperature, dim=-1)
    s = F.log_softmax(student_scores[:, 1:] / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2
