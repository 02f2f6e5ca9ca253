"""SLMRec's distillation losses (paper §4, eq. 3-6) on hidden states, one row per supervised position.

Pair k (k = 1..B) aligns the teacher's state after layer k*M/B with the student's after layer k*N/B.
Every term is a mean over rows: over the examples (the paper's final position), or over every supervised
position of every window (every-position training).
"""

import torch
import torch.nn.functional as F

from .errors import FlagError


# Items whose scores one step of frozen_item_loss holds: rows x ITEM_BLOCK fp32 scores that stay in a core's cache
ITEM_BLOCK = 2048


class _FrozenTableCE(torch.autograd.Function):
    """forward(q [n, d], table [|I|, d], targets [n] in 0..|I|-1) -> mean cross-entropy of q @ table.T. The
    table does not train, so the only gradient, (softmax(q @ table.T) @ table - table[target]) / n, is summed in
    the same pass over blocks of items as the log-sum-exp (an online softmax, as flash attention sums its
    output): two matmuls a block, and the n x |I| scores never in memory at once."""

    @staticmethod
    def forward(ctx, q, table, targets):
        n = len(q)
        top = q.new_full((n, 1), float("-inf"), dtype=torch.float32)
        total, expected = q.new_zeros((n, 1), dtype=torch.float32), q.new_zeros((n, q.shape[1]), dtype=torch.float32)
        for block in table.split(ITEM_BLOCK):
            scores = (q @ block.T).float()
            new_top = torch.maximum(top, scores.amax(1, keepdim=True))
            p, rescale = (scores - new_top).exp_(), (top - new_top).exp_()
            total = total * rescale + p.sum(1, keepdim=True)
            expected = expected * rescale + p.to(block.dtype) @ block
            top = new_top
        target = table[targets].float()
        ctx.save_for_backward((expected / total - target) / n)
        ctx.dtype = q.dtype
        return ((top + total.log()).squeeze(1) - (q.float() * target).sum(1)).mean()

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss).to(ctx.dtype), None, None


def frozen_item_loss(q, table, targets):
    """Cross-entropy over all items (paper eq. 1) of the projected states q [n, d] against a frozen item table
    [|I|, d] (padding left out, targets 0..|I|-1): F.cross_entropy(q @ table.T, targets) to rounding, in a pass
    over blocks of items. At Clothing's 340 k items the score matrix of a batch's positions is hundreds of MB
    that the plain loss writes and reads several times (benchmarks/frozen_item_loss.py); a table of one block
    (ml-100k's) is scored whole."""
    if len(table) <= ITEM_BLOCK:  # one block: torch's own loss on the scores is the same pass, with fewer calls
        return F.cross_entropy((q @ table.T).float(), targets)
    return _FrozenTableCE.apply(q, table, targets)


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


def logit_kd_loss(teacher_scores, student_scores, temperature=1.0):
    """KL(teacher || student) between the item distributions at a temperature (padding left out), x T^2."""
    t = F.log_softmax(teacher_scores[:, 1:] / temperature, dim=-1)
    s = F.log_softmax(student_scores[:, 1:] / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2
