"""SLMRec's distillation losses (paper §4, eq. 3-6) on hidden states, one row per supervised position.

Pair k (k = 1..B) aligns the teacher's state after layer k*M/B with the student's after layer k*N/B.
Every term is a mean over rows: over the examples (the paper's final position), or over every supervised
position of every window (every-position training).
"""

import torch
import torch.nn.functional as F

from .errors import FlagError


def item_loss(scores, labels):
    """Cross-entropy over all items (paper eq. 1), scores [n, items + 1]; column 0 is padding and never a
    prediction."""
    scores = scores.clone()
    scores[:, 0] = float("-inf")
    return F.cross_entropy(scores, labels)


# item_loss in one or two loops over the scores instead of a pass for each of its operators (--compile)
compiled_item_loss = torch.compile(item_loss, dynamic=True)


def block_pairs(teacher_layers: int, student_layers: int, blocks: int):
    """[(teacher layer, student layer)] for k = 1..B, 1-based; B must divide both depths."""
    if blocks < 1 or teacher_layers % blocks or student_layers % blocks:
        raise FlagError(
            f"--blocks {blocks} must divide both the teacher's {teacher_layers} layers and the "
            f"student's {student_layers}"
        )
    m, n = teacher_layers // blocks, student_layers // blocks
    return [(k * m, k * n) for k in range(1, blocks + 1)]


def cosine_loss(teacher_states, student_states):
    """D_cos = 1/B sum_k (1 - cos(h_t, h_s)), averaged over the batch (eq. 3 as a loss)."""
    terms = [1 - F.cosine_similarity(t, s, dim=-1).mean() for t, s in zip(teacher_states, student_states)]
    return torch.stack(terms).mean()


NORM_VARIANTS = ("squared", "unsquared", "relative")


def norm_loss(teacher_states, student_states, variant="squared"):
    """D_norm = 1/B sum_k mean over rows of:
    squared   ||h_t - h_s||^2 (eq. 4, the paper's);
    unsquared ||h_t - h_s|| (the original code's);
    relative  ||h_t - h_s||^2 / ||h_t||^2: the squared distance in units of the teacher state's own size (the
              mean square of (h_t - h_s) / RMS(h_t) over the dimensions), 1 for a student state at zero. An
              LM's hidden states can have norms in the hundreds (SmolLM2: 200-370), which makes the squared
              form thousands of times the item loss; this one is of the item loss's order whatever the scale."""
    if variant not in NORM_VARIANTS:
        raise FlagError(f"--norm_variant must be one of {NORM_VARIANTS}, not {variant!r}")
    terms = []
    for t, s in zip(teacher_states, student_states):
        d = (t - s).pow(2).sum(-1)
        if variant == "unsquared":
            d = d.sqrt()
        elif variant == "relative":
            d = d / t.pow(2).sum(-1).clamp(min=1e-12)
        terms.append(d.mean())
    return torch.stack(terms).mean()


def multi_supervision_loss(adapter_scores, labels, loss=item_loss):
    """L_ms = 1/(B-1) sum_{k<B} CE(y, W_a^(k) h_s^(kn) E^T) (eq. 5): the item loss of each adapter head."""
    return torch.stack([loss(s, labels) for s in adapter_scores]).mean()


def logit_kd_loss(teacher_scores, student_scores, temperature=1.0):
    """KL(teacher || student) between the item distributions at a temperature (padding left out), x T^2."""
    t = F.log_softmax(teacher_scores[:, 1:] / temperature, dim=-1)
    s = F.log_softmax(student_scores[:, 1:] / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2
