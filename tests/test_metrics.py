"""The evaluator against torchmetrics' retrieval metrics, with ties planted on purpose."""

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR, RetrievalNormalizedDCG

from slmrec.metrics import candidate_ranks, evaluate, full_ranks, metrics_from_ranks


def reference(scores, candidates):
    """torchmetrics on the candidate lists. Ties count against the positive, so the positive is
    nudged below any negative it ties with; that breaks every tie the pessimistic way and leaves
    all other orders unchanged (scores are integers, the nudge is 0.5)."""
    # +10: torchmetrics' MRR treats a relevant item with a score <= 0 as not retrieved.
    s = scores.gather(1, candidates).double() + 10
    valid = candidates > 0
    s[:, 0] -= 0.5
    target = torch.zeros_like(s, dtype=torch.bool)
    target[:, 0] = True
    idx = torch.arange(len(s))[:, None].expand_as(s)
    p, t, i = s[valid], target[valid], idx[valid]
    out = {}
    for k in (1, 5, 10):
        out[f"HR@{k}"] = RetrievalHitRate(top_k=k)(p, t, indexes=i).item()
    for k in (5, 10):
        out[f"NDCG@{k}"] = RetrievalNormalizedDCG(top_k=k)(p, t, indexes=i).item()
    out["MRR"] = RetrievalMRR()(p, t, indexes=i).item()
    return out


def random_case(seed, users=64, items=40, negatives=20):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (users, items + 1), generator=g).float()  # few values: many ties
    candidates = torch.stack([torch.randperm(items, generator=g)[:negatives + 1] + 1 for _ in range(users)])
    candidates[: users // 4, -5:] = 0  # some users have fewer candidates
    return scores, candidates


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_candidate_metrics_match_torchmetrics(seed):
    scores, candidates = random_case(seed)
    ours = metrics_from_ranks(candidate_ranks(scores, candidates))
    ref = reference(scores, candidates)
    assert ours.keys() == ref.keys()
    for k in ours:
        assert ours[k] == pytest.approx(ref[k], abs=1e-6), k


def test_constant_scores_give_zero_hits_at_one():
    scores, candidates = random_case(0)
    ranks = candidate_ranks(torch.zeros_like(scores), candidates)
    assert (ranks == (candidates[:, 1:] > 0).sum(1)).all()  # the positive ranks last
    assert metrics_from_ranks(ranks)["HR@1"] == 0.0


def test_hand_computed_ranks():
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.5, 0.1, 0.7]])
    # positive item 2 (0.5) vs items 3 (tie), 4 (lower), 5 (higher): two ahead of it
    assert candidate_ranks(scores, torch.tensor([[2, 3, 4, 5, 0]])).item() == 2
    m = metrics_from_ranks(torch.tensor([2]))
    assert m["HR@1"] == 0 and m["HR@5"] == 1 and m["MRR"] == pytest.approx(1 / 3)
    assert m["NDCG@5"] == pytest.approx(1 / np.log2(4))
    # full ranking: item 1 (0.9) is in the user's history and left out; 3 ties and 5 is higher
    exclude = torch.tensor([[False, True, False, False, False, False]])
    assert full_ranks(scores, torch.tensor([2]), exclude).item() == 2
    assert full_ranks(scores, torch.tensor([2]), torch.zeros_like(exclude)).item() == 3


def test_evaluate_on_a_prepared_dataset(tiny_dataset):
    d = tiny_dataset

    targets = iter([d.target(u, "test") for u in range(d.num_users)])

    def oracle(history):  # users arrive in order: score each one's test item highest
        scores = torch.zeros(len(history), d.num_items + 1)
        for r in range(len(history)):
            scores[r, next(targets)] = 1.0
        return scores

    m = evaluate(oracle, d, "test", max_len=20, batch_size=7)
    assert m["HR@1"] == 1.0 and m["full"]["HR@1"] == 1.0
    flat = evaluate(lambda h: torch.zeros(len(h), d.num_items + 1), d, "valid", max_len=20, per_user=True)
    assert flat["HR@1"] == 0.0 and flat["full"]["MRR"] < 0.2
    # full ranking leaves out the user's other history items: only the unseen items compete
    unseen = d.num_items - np.array([len(s) for s in d.sequences])
    assert flat["ranks"]["full"] == unseen.tolist()
