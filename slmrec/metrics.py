"""The one evaluator: HR@k, NDCG@k and MRR over the stored candidates and under full ranking.

The rank of the positive counts every other candidate scoring strictly higher *or equal*:
ties count against the positive, so a model that scores everything equal gets HR@1 = 0. A NaN score ranks
below everything (as -inf, and ties count against it): a broken model can never look good.
"""

import logging

import numpy as np
import torch
import torch.distributed as dist

from tqdm.auto import tqdm

from .batches import history_batches, left_pad
from .machine import empty_huge

log = logging.getLogger(__name__)

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
    (ids are distinct per row); the count in int32 (faster than the default int64 sum of a bool)."""
    pos = scores.gather(1, positives[:, None])
    ahead = (scores[:, 1:] >= pos).sum(1, dtype=torch.int32) - 1
    listed = (exclude > 0) & (exclude != positives[:, None])
    return ahead - ((scores.gather(1, exclude) >= pos) & listed).sum(1, dtype=torch.int32)


def matrix_ranks(scores, candidates, exclude=None):
    """(candidate ranks, full ranks or None) under scores [B, items+1] (candidate_ranks; full_ranks where
    `exclude` is given); a NaN score counts as -inf."""
    scores = scores.float()
    if scores.isnan().any():  # a NaN ranks as -inf: below everything, ties against it (a pass less when none)
        scores = scores.masked_fill(scores.isnan(), float("-inf"))
    return (
        candidate_ranks(scores, candidates),
        None if exclude is None else full_ranks(scores, candidates[:, 0], exclude),
    )


# Items per block when ranking among all items from factors: a block's scores for a batch of users (256, the
# evaluation's default, x 2,048 floats: 2 MB) are compared while they are in cache, instead of a [B, |I|] matrix
# written out and read back. At Clothing's shape 2,048 ranked in 460 us a user (median of 8), 4,096 in 825-861:
# its 4 MB of scores left the cache (1,024: 470).
RANK_BLOCK = 2048
SORTED_PAIRS_BLOCKS = 32  # blocked_full_ranks sorts the listed items by block above this many blocks
# Floats of candidate vectors gathered at a time (8 MB): read back from cache by the dot products.
GATHER_FLOATS = 1 << 21
# Up to this many items per stored candidate, the candidates' scores are taken from the whole score matrix:
# gathering C item vectors per user costs more than a matmul over a catalogue of up to ~16 C items.
MATRIX_ITEMS_PER_CANDIDATE = 16


class FactoredRanking:
    """matrix_ranks of the scores h [B, d] @ items.T [d, items+1] (column 0, padding, never competes) without
    their [B, items+1] matrix on a large catalogue: the candidates' scores from their gathered vectors (C dot
    products per user), the full ranks a block of items at a time (blocked_full_ranks). A catalogue of one
    block scores as one matrix. Made once per pass: the table is copied into huge pages, and the gathered
    vectors go to one scratch buffer there (torch's own gathers page-fault a new buffer each time)."""

    def __init__(self, items):
        self.items, self.scratch = items.detach().float(), None
        if self.items.device.type == "cpu" and self.items.nbytes >= 1 << 21:
            self.items = empty_huge(self.items.shape).copy_(self.items)

    def __call__(self, h, candidates, exclude=None):
        h, table, C = h.float(), self.items, candidates.shape[1]
        if table.shape[0] - 1 <= (RANK_BLOCK if exclude is not None else MATRIX_ITEMS_PER_CANDIDATE * C):
            scores = h @ table.T
            scores[:, 0] = float("-inf")
            return matrix_ranks(scores, candidates, exclude)
        rows = max(1, GATHER_FLOATS // (C * h.shape[1]))
        if self.scratch is None or self.scratch.shape[0] < rows * C or self.scratch.device != h.device:
            self.scratch = empty_huge((rows * C, h.shape[1]), device=h.device)
        s = torch.empty(candidates.shape, device=h.device)
        for i in range(0, len(h), rows):
            c = candidates[i : i + rows]
            vectors = torch.index_select(table, 0, c.flatten(), out=self.scratch[: c.numel()]).view(*c.shape, -1)
            s[i : i + rows] = torch.einsum("bd,bcd->bc", h[i : i + rows], vectors)
        s = s.masked_fill((candidates == 0) | s.isnan(), float("-inf"))
        local = torch.arange(C, device=s.device).expand_as(s)  # column j scores candidate j
        return (
            candidate_ranks(s, local, candidates),
            None if exclude is None else blocked_full_ranks(h, table, candidates[:, 0], exclude, RANK_BLOCK),
        )


def blocked_full_ranks(h, table, positives, exclude, block=RANK_BLOCK):
    """full_ranks of h @ table.T, `block` items at a time, each block counted while in cache. The positive and
    the excluded items are counted out with their own block's scores, so a rank counts the other items exactly
    as the blocks scored them; the positive's score comes from a [B, B] product of the same kind (equal to its
    block's score but for the last bit, which only a tie at that bit would notice)."""
    n_items = table.shape[0] - 1
    pos = torch.mm(h, table[positives].T).diagonal()[:, None]
    pos = pos.masked_fill(pos.isnan(), float("-inf"))
    listed = torch.cat([positives[:, None], exclude.masked_fill(exclude == positives[:, None], 0)], 1)
    # Each listed (user, item) pair's block (padding, 0, in block -1) and column in it. Over many blocks the pairs
    # are sorted by block once, so a block corrects only its own few; over a few, the sort costs more than
    # looking at every pair in each block.
    where, column = (listed - 1).div(block, rounding_mode="floor"), (listed - 1) % block
    blocks = -(-n_items // block)
    sorted_pairs = blocks > SORTED_PAIRS_BLOCKS
    if sorted_pairs:
        order_by_block, order = where.reshape(-1).sort()
        bounds = torch.searchsorted(order_by_block, torch.arange(blocks + 1, device=h.device)).tolist()
        pair_rows, pair_columns = order // listed.shape[1], column.reshape(-1)[order]
    ahead = torch.zeros(len(h), dtype=torch.int32, device=h.device)
    scratch = h.new_empty((len(h), block))  # one block's scores, reused: a fresh one each block is slower
    for b, start in enumerate(range(1, n_items + 1, block)):
        w = table[start : start + block]
        s = torch.mm(h, w.T, out=scratch) if len(w) == block else h @ w.T
        ahead += (s >= pos).sum(1, dtype=torch.int32)  # a NaN compares false: below a finite positive, as -inf
        if sorted_pairs:
            r, c = pair_rows[bounds[b] : bounds[b + 1]], pair_columns[bounds[b] : bounds[b + 1]]
            ahead.index_add_(0, r, (s[r, c] >= pos[r, 0]).to(torch.int32), alpha=-1)
        else:
            if len(w) < block:  # the last block may be narrower than the columns of the others
                column = column.clamp(max=len(w) - 1)
            ahead -= ((s.gather(1, column) >= pos) & (where == b)).sum(1, dtype=torch.int32)
    # A positive scoring -inf (or NaN) has every other item ahead of it, NaN ones included.
    everyone = n_items - (listed > 0).sum(1, dtype=torch.int32)
    return torch.where(pos[:, 0] == float("-inf"), everyone, ahead)


def ndcg_per_user(ranks, k) -> torch.Tensor:
    """Each user's NDCG@k from the positive's 0-based rank: 1 / log2(rank + 2) within the top k, else 0."""
    r = torch.as_tensor(ranks, dtype=torch.float64)
    return torch.where(r < k, 1.0 / torch.log2(r + 2.0), 0.0)


def metrics_from_ranks(ranks) -> dict:
    r = torch.as_tensor(ranks, dtype=torch.float64)
    out = {f"HR@{k}": (r < k).double().mean().item() for k in KS}
    for k in (5, 10):
        out[f"NDCG@{k}"] = ndcg_per_user(r, k).mean().item()
    out["MRR"] = (1.0 / (r + 1.0)).mean().item()
    return {k: out[k] for k in METRICS}


@torch.no_grad()
def rank_users(
    score_fn,
    data,
    split,
    users,
    max_len=50,
    batch_size=128,
    device="cpu",
    by_length=False,
    full=True,
    user_fn=None,
    items=None,
    progress=False,
):
    """{name: (candidate ranks, full ranks or None)} per user. score_fn(LongTensor [B, max_len] left-padded)
    returns scores [B, items+1], or a dict of them (several scorings from one forward pass); a tensor is named
    None. full: also rank among all items (else only the stored candidates). For models whose scores are user
    states times an item table, user_fn(history) -> [B, d] and items [items+1, d] are used instead of score_fn:
    the candidates cost C dot products per user and full ranking never holds the [B, items] matrix
    (FactoredRanking). by_length: batch users of similar history length together (less padding); ranks still
    follow `users`."""
    users = np.asarray(users)
    # Ranks are written into arrays made once: thousands of small tensors kept between the batches' large
    # temporaries pin the allocator's memory (a GB more at the peak over 1 M users).
    ranks = {}
    batches = history_batches([data.history(u, split) for u in users], max_len, batch_size, by_length)
    bar = tqdm(total=len(users), desc=f"ranking {split}", unit="user", disable=not progress, leave=False)
    factored = FactoredRanking(items) if user_fn is not None else None
    trivial = 0  # rows whose candidates hold no negative: ranked first whatever the model
    for idx, padded in batches:
        us = users[idx]
        history = torch.from_numpy(padded).to(device)
        cand = torch.from_numpy(data.candidate_rows(split, us)).to(device)
        trivial += int((cand[:, 1:] == 0).all(1).sum())
        seen = None
        if full:  # what the users had seen, left out of their full ranking (PreparedData.seen)
            seqs = [data.seen(u, split) for u in us]
            seen = torch.from_numpy(left_pad(seqs, max(map(len, seqs)))).to(device)
        if user_fn is not None:
            ranked = {None: factored(user_fn(history), cand, seen)}
        else:
            out = score_fn(history)
            ranked = {
                name: matrix_ranks(s, cand, seen) for name, s in (out if isinstance(out, dict) else {None: out}).items()
            }
        for name, pair in ranked.items():
            pair = [None if r is None else r.cpu().numpy() for r in pair]
            if name not in ranks:
                ranks[name] = tuple(None if r is None else np.empty(len(users), r.dtype) for r in pair)
            for out, r in zip(ranks[name], pair):
                if r is not None:
                    out[idx] = r
        bar.update(len(us))
    bar.close()
    if trivial:
        log.warning(
            "%s: %d of %d %s rows have no negative candidate (their users have seen every other item): their "
            "positive ranks first whatever the model, raising every metric",
            data.path,
            trivial,
            len(users),
            split,
        )
    return ranks


def evaluate(
    score_fn,
    data,
    split,
    max_len=50,
    batch_size=128,
    device="cpu",
    per_user=False,
    by_length=False,
    full=True,
    user_fn=None,
    items=None,
    progress=False,
) -> dict:
    """Metrics on `split` ("valid" or "test") for every user, or every row of a given split (a dict of them per
    name when score_fn returns a dict): on the stored candidates, and with `full` under "full" among all items too
    (rank_users); under torch.distributed each rank scores a share of the users and the ranks are gathered, so
    every rank returns the same numbers."""
    users = np.arange(data.num_rows(split))
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        users = users[dist.get_rank() :: world]
    ranks = rank_users(
        score_fn, data, split, users, max_len, batch_size, device, by_length, full, user_fn, items, progress
    )
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (users, ranks))
        order = np.argsort(np.concatenate([p[0] for p in parts]))
        ranks = {
            name: tuple(
                None if mine is None else np.concatenate([p[1][name][i] for p in parts])[order]
                for i, mine in enumerate(ranks[name])
            )
            for name in ranks
        }
    results = {}
    for name, (cand, full_ranked) in ranks.items():
        out = metrics_from_ranks(cand)
        if full_ranked is not None:
            out["full"] = metrics_from_ranks(full_ranked)
        if per_user:
            out["ranks"] = {
                "candidates": cand.tolist(),
                **({"full": full_ranked.tolist()} if full_ranked is not None else {}),
            }
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
