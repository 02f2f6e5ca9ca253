"""The one evaluator: HR@k, NDCG@k and MRR over the stored candidates and under full ranking.

The rank of the positive counts every other candidate scoring strictly higher *or equal*:
ties count against the positive, so a model that scores everything equal gets HR@1 = 0. A NaN score ranks
below everything (as -inf, and ties count against it): a broken model can never look good.
"""

import numpy as np
import torch
import torch.distributed as dist

from tqdm.auto import tqdm

from .data import history_batches, left_pad

KS = (1, 5, 10)
METRICS = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR")


def candidate_ranks(scores: torch.Tensor, columns: torch.Tensor, candidates: torch.Tensor = None) -> torch.Tensor:
    """0-based ranks of the positive (candidates[:, 0]) among the other candidates (0 = no candidate) under
    scores [B, items+1] (columns = candidates), or scores [B, C] of the candidates alone (columns = 0..C-1)."""
    candidates = columns if candidates is None else candidates
    s = scores.gather(1, columns)
    pos, neg = s[:, :1], s[:, 1:]
    ahead = (neg >= pos) & (candidates[:, 1:] > 0)
    return ahead.sum(1)


def full_ranks(scores: torch.Tensor, positives: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """0-based ranks of positives among all items 1..|I| under scores [B, items+1] (NaN already -inf);
    `exclude` [B, n] lists items left out (the user's other history items; 0 = none, and the positive itself
    may be listed). Padding (column 0) never competes. Counted without a [B, items] mask of the excluded
    items: every item scoring at least the positive, less the positive itself and the excluded items that do
    (ids are distinct per row); the count in int32 (1.8x faster than the default int64 sum of a bool)."""
    pos = scores.gather(1, positives[:, None])
    ahead = (scores[:, 1:] >= pos).sum(1, dtype=torch.int32) - 1
    listed = (exclude > 0) & (exclude != positives[:, None])
    return ahead - ((scores.gather(1, exclude) >= pos) & listed).sum(1, dtype=torch.int32)


def metrics_from_ranks(ranks) -> dict:
    r = torch.as_tensor(ranks, dtype=torch.float64)
    out = {f"HR@{k}": (r < k).double().mean().item() for k in KS}
    gain = 1.0 / torch.log2(r + 2.0)
    for k in (5, 10):
        out[f"NDCG@{k}"] = torch.where(r < k, gain, torch.zeros_like(gain)).mean().item()
    out["MRR"] = (1.0 / (r + 1.0)).mean().item()
    return {k: out[k] for k in METRICS}


@torch.no_grad()
def rank_users(score_fn, data, split, users, max_len=50, batch_size=128, device="cpu", by_length=False, full=True,
               candidate_fn=None, progress=False):
    """{name: (candidate ranks, full ranks or None)} per user. score_fn(LongTensor [B, max_len] left-padded)
    returns scores [B, items+1], or a dict of them (several scorings from one forward pass); a tensor is named
    None. full: also rank among all items (else only the stored candidates); candidate_fn(history, candidates
    [B, C]) -> scores [B, C]: the stored candidates scored alone, used when not full (scoring every item costs
    |I| dot products per user, the candidates 1,000). by_length: batch users of similar history length together
    (less padding); ranks still follow `users`."""
    users = np.asarray(users)
    cand_r, full_r, order = {}, {}, []
    batches = history_batches([data.history(u, split) for u in users], max_len, batch_size, by_length)
    bar = tqdm(total=len(users), desc=f"ranking {split}", unit="user", disable=not progress, leave=False)
    for idx, padded in batches:
        us = users[idx]
        order.append(idx)
        history = torch.from_numpy(padded).to(device)
        cand = torch.from_numpy(data.candidate_rows(split, us)).to(device)
        if not full and candidate_fn is not None:
            out = {None: candidate_fn(history, cand)}
            local = torch.arange(cand.shape[1], device=device).expand_as(cand)  # column j scores candidate j
        else:
            out = score_fn(history)
            out = out if isinstance(out, dict) else {None: out}
            local = cand
        if full:  # the users' whole sequences, left out of their full ranking
            seqs = [data.sequences[u] for u in us]
            seen = torch.from_numpy(left_pad(seqs, max(map(len, seqs)))).to(device)
        for name, scores in out.items():
            scores = scores.float()
            if scores.isnan().any():  # a NaN ranks as -inf: below everything, ties against it (a pass less when none)
                scores = scores.masked_fill(scores.isnan(), float("-inf"))
            cand_r.setdefault(name, []).append(candidate_ranks(scores, local, cand).cpu())
            if full:
                full_r.setdefault(name, []).append(full_ranks(scores, cand[:, 0], seen.to(scores.device)).cpu())
        bar.update(len(us))
    bar.close()
    back = np.argsort(np.concatenate(order))  # from batch order to the order of `users`
    return {name: (torch.cat(cand_r[name]).numpy()[back], torch.cat(full_r[name]).numpy()[back] if full else None)
            for name in cand_r}


def evaluate(score_fn, data, split, max_len=50, batch_size=128, device="cpu", per_user=False, by_length=False,
             full=True, candidate_fn=None, progress=False) -> dict:
    """Metrics on `split` ("valid" or "test") for every user (a dict of them per name when score_fn returns
    a dict): on the stored candidates, and with `full` under "full" among all items too (rank_users); under
    torch.distributed each rank scores a share of the users and the ranks are gathered, so every rank returns
    the same numbers."""
    users = np.arange(data.num_users)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        users = users[dist.get_rank()::world]
    ranks = rank_users(score_fn, data, split, users, max_len, batch_size, device, by_length, full, candidate_fn,
                       progress)
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (users, ranks))
        order = np.argsort(np.concatenate([p[0] for p in parts]))
        ranks = {name: tuple(None if mine is None else np.concatenate([p[1][name][i] for p in parts])[order]
                             for i, mine in enumerate(ranks[name])) for name in ranks}
    results = {}
    for name, (cand, full_ranked) in ranks.items():
        out = metrics_from_ranks(cand)
        if full_ranked is not None:
            out["full"] = metrics_from_ranks(full_ranked)
        if per_user:
            out["ranks"] = {"candidates": cand.tolist(),
                            **({"full": full_ranked.tolist()} if full_ranked is not None else {})}
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
