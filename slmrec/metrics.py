"""The one evaluator: HR@k, NDCG@k and MRR over the stored candidates and under full ranking.

The rank of the positive counts every other candidate scoring strictly higher *or equal*:
ties count against the positive, so a model that scores everything equal gets HR@1 = 0. A NaN score ranks
below everything (as -inf, and ties count against it): a broken model can never look good.
"""

import numpy as np
import torch
import torch.distributed as dist

from .data import history_batches

KS = (1, 5, 10)
METRICS = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR")


def candidate_ranks(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """0-based ranks of candidates[:, 0] among candidates[:, 1:] (0 = no candidate) under scores [B, items+1]."""
    s = scores.gather(1, candidates)
    pos, neg = s[:, :1], s[:, 1:]
    ahead = (neg >= pos) & (candidates[:, 1:] > 0)
    return ahead.sum(1)


def full_ranks(scores: torch.Tensor, positives: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """0-based ranks of positives among all items 1..|I|; `exclude` [B, items+1] marks items left out
    (the user's other history items). Padding (column 0) never competes."""
    pos = scores.gather(1, positives[:, None])
    ahead = scores >= pos
    ahead[:, 0] = False
    ahead &= ~exclude
    ahead.scatter_(1, positives[:, None], False)
    return ahead.sum(1)


def metrics_from_ranks(ranks) -> dict:
    r = torch.as_tensor(ranks, dtype=torch.float64)
    out = {f"HR@{k}": (r < k).double().mean().item() for k in KS}
    gain = 1.0 / torch.log2(r + 2.0)
    for k in (5, 10):
        out[f"NDCG@{k}"] = torch.where(r < k, gain, torch.zeros_like(gain)).mean().item()
    out["MRR"] = (1.0 / (r + 1.0)).mean().item()
    return {k: out[k] for k in METRICS}


@torch.no_grad()
def rank_users(score_fn, data, split, users, max_len=50, batch_size=128, device="cpu", by_length=False):
    """{name: (candidate ranks, full ranks)} per user. score_fn(LongTensor [B, max_len] left-padded) returns
    scores [B, items+1], or a dict of them (several scorings from one forward pass); a tensor is named None.
    by_length: batch users of similar history length together (less padding); ranks still follow `users`."""
    cand_all = data.candidates[split]
    users = np.asarray(users)
    cand_r, full_r, order = {}, {}, []
    for idx, padded in history_batches([data.history(u, split) for u in users], max_len, batch_size, by_length):
        us = users[idx]
        order.append(idx)
        out = score_fn(torch.from_numpy(padded).to(device))
        for name, scores in (out.items() if isinstance(out, dict) else [(None, out)]):
            scores = scores.float().masked_fill(scores.isnan(), float("-inf"))
            cand = torch.from_numpy(cand_all[us].astype(np.int64)).to(scores.device)
            exclude = torch.zeros_like(scores, dtype=torch.bool)
            for r, u in enumerate(us):
                exclude[r, torch.from_numpy(data.sequences[u].astype(np.int64))] = True
            cand_r.setdefault(name, []).append(candidate_ranks(scores, cand).cpu())
            full_r.setdefault(name, []).append(full_ranks(scores, cand[:, 0], exclude).cpu())
    back = np.argsort(np.concatenate(order))  # from batch order to the order of `users`
    return {name: (torch.cat(cand_r[name]).numpy()[back], torch.cat(full_r[name]).numpy()[back]) for name in cand_r}


def evaluate(score_fn, data, split, max_len=50, batch_size=128, device="cpu", per_user=False, by_length=False) -> dict:
    """Metrics on `split` ("valid" or "test") for every user (a dict of them per name when score_fn returns
    a dict); under torch.distributed each rank scores a share of the users and the ranks are gathered,
    so every rank returns the same numbers."""
    users = np.arange(data.num_users)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        users = users[dist.get_rank()::world]
    ranks = rank_users(score_fn, data, split, users, max_len, batch_size, device, by_length)
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (users, ranks))
        order = np.argsort(np.concatenate([p[0] for p in parts]))
        ranks = {name: tuple(np.concatenate([p[1][name][i] for p in parts])[order] for i in range(2))
                 for name in ranks}
    results = {}
    for name, (cand, full) in ranks.items():
        out = metrics_from_ranks(cand)
        out["full"] = metrics_from_ranks(full)
        if per_user:
            out["ranks"] = {"candidates": cand.tolist(), "full": full.tolist()}
        results[name] = out
    return results[None] if None in results else results


def flatten(metrics: dict, prefix="") -> dict:
    """{"HR@1":.., "full": {"HR@1":..}} -> {"HR@1":.., "full_HR@1":..} for loggers."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}_"))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out
