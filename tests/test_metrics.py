"""The evaluator against torchmetrics' retrieval metrics, with ties planted on purpose."""

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR, RetrievalNormalizedDCG

from slmrec import metrics
from slmrec.metrics import blocked_full_ranks, candidate_ranks, evaluate, full_ranks, metrics_from_ranks


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
    candidates = torch.stack([torch.randperm(items, generator=g)[: negatives + 1] + 1 for _ in range(users)])
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
    assert full_ranks(scores, torch.tensor([2]), torch.tensor([[0, 1, 2]])).item() == 2  # the positive may be listed
    assert full_ranks(scores, torch.tensor([2]), torch.zeros(1, 3, dtype=torch.long)).item() == 3


def test_full_ranks_equal_the_masked_count_by_hand():
    """The counting form (no [B, items] mask) against the plain one: a mask of the history, every item scoring
    at least the positive counted; scores drawn from few values, so ties are everywhere."""
    g = torch.Generator().manual_seed(0)
    B, items = 64, 50
    scores = torch.randint(0, 5, (B, items + 1), generator=g).float()
    positives = torch.randint(1, items + 1, (B,), generator=g)
    history = torch.randint(0, items + 1, (B, 12), generator=g)  # 0 = padding; repeats are dropped below
    expected = []
    for b in range(B):
        seen = set(history[b].tolist()) - {0, positives[b].item()}
        expected.append(
            sum(
                1
                for i in range(1, items + 1)
                if i != positives[b].item() and i not in seen and scores[b, i] >= scores[b, positives[b]]
            )
        )
    unique = torch.stack([torch.tensor(sorted(set(h.tolist())) + [0] * (12 - len(set(h.tolist())))) for h in history])
    assert full_ranks(scores, positives, unique).tolist() == expected


def integer_factors(items, d=3, seed=0):
    """An item table and a toy user state with small integer values: every score is an exact integer in fp32
    whatever the kernel, so two ways of scoring must rank alike bit for bit, ties (everywhere here) included."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randint(-2, 3, (items + 1, d), generator=g).float()
    return table, lambda h: table[h[:, -1]] + 2 * table[h[:, -2]]


def test_blocked_full_ranks_count_as_the_score_matrix(monkeypatch):
    g = torch.Generator().manual_seed(1)
    B, items = 64, 50
    table, _ = integer_factors(items)
    table[7] = float("nan")  # an item the model cannot score
    h = torch.randint(-2, 3, (B, 3), generator=g).float()
    h[5] = float("nan")  # a user whose positive scores NaN: everything is ahead of it
    positives = torch.randint(1, items + 1, (B,), generator=g)
    positives[9] = 7
    history = torch.stack([torch.randperm(items, generator=g)[:12] + 1 for _ in range(B)])
    history[:, :3] = 0  # left padding
    history[::4, -1] = positives[::4]  # the positive listed among the excluded items
    scores = h @ table.T
    scores[:, 0] = float("-inf")
    expected = full_ranks(scores.masked_fill(scores.isnan(), float("-inf")), positives, history)
    for r in (5, 9):  # everything not excluded is ahead of a positive scoring NaN
        assert expected[r] == items - 1 - 9 + bool(positives[r] in history[r])
    for sort_above in (0, 10**9):  # the listed items sorted by block, or looked up in every block
        monkeypatch.setattr(metrics, "SORTED_PAIRS_BLOCKS", sort_above)
        for block in (1, 7, 16, items, 1000):
            assert torch.equal(blocked_full_ranks(h, table, positives, history, block), expected), (block, sort_above)
    table[3] += 1  # one item scored otherwise: the ranks move
    assert not torch.equal(blocked_full_ranks(h, table, positives, history, 7), expected)


@pytest.mark.parametrize("paths", ["matrix", "gathered and blocked"])
def test_ranking_from_factors_as_from_all_scores(tiny_dataset, monkeypatch, paths):
    """evaluate with user_fn and items (what SASRec and the others use) against evaluate on their score
    matrix, on both of FactoredRanking's paths: the whole matrix (a small catalogue), and the candidates'
    gathered vectors with full ranking a few items at a time."""
    if paths != "matrix":
        monkeypatch.setattr(metrics, "MATRIX_ITEMS_PER_CANDIDATE", 0)
        monkeypatch.setattr(metrics, "RANK_BLOCK", 4)
        monkeypatch.setattr(metrics, "GATHER_FLOATS", 20)
    table, state = integer_factors(tiny_dataset.num_items)
    for split in ("valid", "test"):
        plain = evaluate(lambda h: state(h) @ table.T, tiny_dataset, split, 6, 7, per_user=True)
        factored = evaluate(None, tiny_dataset, split, 6, 7, per_user=True, user_fn=state, items=table, by_length=True)
        alone = evaluate(None, tiny_dataset, split, 6, 7, per_user=True, full=False, user_fn=state, items=table)
        assert factored["ranks"] == plain["ranks"] and factored["full"] == plain["full"]
        assert alone["ranks"]["candidates"] == plain["ranks"]["candidates"] and "full" not in alone
    wrong = evaluate(None, tiny_dataset, "test", 6, 7, per_user=True, user_fn=lambda h: state(h) + 1, items=table)
    assert wrong["ranks"] != plain["ranks"]


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


def test_huge_page_tensors_hold_what_is_written():
    from slmrec.machine import empty_huge

    t = torch.randn(1024, 640)
    h = empty_huge(t.shape).copy_(t)
    assert h.shape == t.shape and h.is_contiguous() and torch.equal(h, t)
