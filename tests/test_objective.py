"""Every-position supervision: causality, padding, the loss and the distillation terms against references
computed one position at a time with the paper's one-target readout."""

import math

import pytest
import torch
import torch.nn.functional as F

from slmrec.distill import DistillConfig, distill_loss, student_config
from slmrec.examples import ExampleConfig, NextItemDataset, UserTargetDataset, WindowDataset, training_examples
from slmrec import losses
from slmrec.losses import block_pairs, frozen_item_loss, norm_loss
from slmrec.model import ELLMRec
from helpers import item_loss, tiny_model

WINDOW = torch.tensor([[0, 0, 3, 7, 1, 9], [4, 2, 8, 5, 6, 10]])  # two left-padded windows, max_len 6
LABELS = torch.tensor([[0, 0, 7, 1, 9, 12], [2, 8, 5, 6, 10, 11]])  # the next item at every position


def prefix(row, c, length=6):
    """Row `row` of WINDOW cut after column c and left-padded to `length`, as its own history."""
    items = WINDOW[row, : c + 1]
    items = items[items != 0]
    return torch.cat([torch.zeros(length - len(items), dtype=torch.long), items])[None]


def randomised(model):
    torch.nn.init.normal_(model.w_out.weight)
    return model.eval()


def test_the_state_at_position_t_is_the_final_state_of_the_prefix_alone(tiny_lm_dir):
    model = randomised(tiny_model(tiny_lm_dir, num_layers=3))
    with torch.no_grad():
        every, every_layers = model.encode(WINDOW, layer_states=True, every_position=True)
        for row in range(2):
            for c in range(6):
                if WINDOW[row, c] == 0:
                    continue
                alone, alone_layers = model.encode(prefix(row, c), layer_states=True)
                assert torch.allclose(every[row, c], alone[0], atol=1e-5), (row, c)
                for a, b in zip(every_layers, alone_layers):
                    assert torch.allclose(a[row, c], b[0], atol=1e-5)


def test_a_batch_padded_to_its_own_length_scores_as_padded_to_max_len(tiny_lm_dir):
    model = randomised(tiny_model(tiny_lm_dir))
    short = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 5, 9, 2], [0, 0, 0, 0, 0, 0, 1, 4, 3, 2]])  # max_len 10
    with torch.no_grad():
        full = model.item_scores(model.encode(short))  # no trimming: 10 columns
        trimmed = model.score(short)  # 4 columns, the longest history
        assert torch.allclose(full, trimmed, atol=1e-5)
        y = torch.cat([short[:, 1:], torch.tensor([[7], [8]])], 1) * (short != 0)
        loss_full = item_loss(model.item_scores(model.encode(short, every_position=True))[y != 0], y[y != 0])
        assert model(short, y)["loss"].item() == pytest.approx(loss_full.item(), abs=1e-5)


@pytest.mark.parametrize("readout", ["last_item", "response"])
def test_every_position_loss_is_the_mean_one_target_loss(tiny_lm_dir, readout):
    model = randomised(tiny_model(tiny_lm_dir, readout=readout))
    losses = []
    with torch.no_grad():
        for row in range(2):
            for c in range(6):
                if LABELS[row, c] == 0:
                    continue
                if readout == "last_item":
                    scores = model.score(prefix(row, c))
                else:  # the state at the item's own position, before the marker
                    scores = model.item_scores(model.encode(prefix(row, c), every_position=True)[:, -2])
                losses.append(item_loss(scores, LABELS[row, c][None]).item())
            if readout == "response":  # the marker after the whole window predicts its last target too
                losses.append(item_loss(model.score(WINDOW[row][None]), LABELS[row, 5][None]).item())
        got = model(WINDOW, LABELS)["loss"].item()
    assert got == pytest.approx(sum(losses) / len(losses), rel=1e-4)


def test_every_position_distillation_terms_match_a_per_position_reference(tiny_lm_dir):
    teacher = randomised(tiny_model(tiny_lm_dir, num_layers=4))
    dcfg = DistillConfig("", blocks=2, lambda_cos=1.0, lambda_norm=0.5, lambda_ms=1.0, norm_variant="relative")
    student = ELLMRec(student_config(teacher.cfg, 2, dcfg), teacher.item_embedding).eval()
    for head in [student.w_out, *student.adapters]:
        torch.nn.init.normal_(head.weight)
    pairs = block_pairs(4, 2, 2)  # (2, 1), (4, 2)
    with torch.no_grad():
        total, terms, _ = distill_loss(student, teacher, dcfg, pairs, WINDOW, LABELS)
        cos = norm = ce = ms = 0.0
        n = 0
        for row in range(2):
            for c in range(6):
                if LABELS[row, c] == 0:
                    continue
                n += 1
                x, y = prefix(row, c), LABELS[row, c][None]
                _, t_states = teacher.encode(x, layer_states=True)
                h_s, s_states = student.encode(x, layer_states=True)
                ce += item_loss(student.item_scores(h_s), y).item()
                ms += item_loss(student.item_scores(s_states[0], student.adapters[0]), y).item()
                for t, s in pairs:
                    a, b = t_states[t - 1][0].tolist(), s_states[s - 1][0].tolist()
                    dot = sum(p * q for p, q in zip(a, b))
                    na, nb = math.sqrt(sum(p * p for p in a)), math.sqrt(sum(q * q for q in b))
                    cos += (1 - dot / (na * nb)) / len(pairs)
                    norm += sum((p - q) ** 2 for p, q in zip(a, b)) / (na * na) / len(pairs)
    assert terms["ce"].item() == pytest.approx(ce / n, rel=1e-4)
    assert terms["ms"].item() == pytest.approx(ms / n, rel=1e-4)
    assert terms["cos"].item() == pytest.approx(cos / n, rel=1e-4)
    assert terms["norm"].item() == pytest.approx(norm / n, rel=1e-4)
    assert total.item() == pytest.approx((ce + ms + cos + 0.5 * norm) / n, rel=1e-4)
    # Only the final positions: the features of the last column alone.
    final = DistillConfig("", blocks=2, lambda_norm=0.0, lambda_ms=0.0, feature_positions="final")
    with torch.no_grad():
        _, terms_final, _ = distill_loss(student, teacher, final, pairs, WINDOW, LABELS)
        _, t_states = teacher.encode(WINDOW, layer_states=True)
        _, s_states = student.encode(WINDOW, layer_states=True)
    ref = sum(1 - torch.cosine_similarity(t_states[t - 1], s_states[s - 1], dim=-1).mean() for t, s in pairs) / 2
    assert terms_final["cos"].item() == pytest.approx(ref.item(), rel=1e-4)


def test_relative_norm_is_one_for_a_zero_student_whatever_the_scale():
    g = torch.Generator().manual_seed(0)
    t = [300 * torch.randn(4, 16, generator=g) for _ in range(2)]
    zero = [torch.zeros(4, 16) for _ in range(2)]
    assert norm_loss(t, zero, "relative").item() == pytest.approx(1.0, rel=1e-6)
    assert norm_loss(t, zero, "squared").item() > 1e5
    with pytest.raises(ValueError, match="--norm_variant"):
        norm_loss(t, zero, "cubed")


def test_training_examples_for_each_objective(tiny_dataset):
    windows = training_examples(tiny_dataset, 4, ExampleConfig())
    assert isinstance(windows, WindowDataset)
    targets = sum(len(tiny_dataset.train_part(u)) - 1 for u in range(tiny_dataset.num_users))
    assert sum(int((windows[i]["labels"] != 0).sum()) for i in range(len(windows))) == targets  # each once
    assert isinstance(training_examples(tiny_dataset, 4, ExampleConfig("last_target")), NextItemDataset)
    users = training_examples(tiny_dataset, 4, ExampleConfig("last_target", "user"))
    assert isinstance(users, UserTargetDataset) and len(users) == tiny_dataset.num_users
    torch.manual_seed(0)
    seq = tiny_dataset.train_part(3)
    drawn = {users[3]["labels"].item() for _ in range(200)}
    assert drawn == set(seq[1:].tolist())  # every training target of the user, uniformly
    with pytest.raises(ValueError, match="objective"):
        training_examples(tiny_dataset, 4, ExampleConfig("sideways"))
    with pytest.raises(ValueError, match="last_target only"):
        training_examples(tiny_dataset, 4, ExampleConfig(sampling="user"))


def test_readout_is_checked_before_the_lm_loads():
    from slmrec.model import ELLMRecConfig

    with pytest.raises(ValueError, match="readout"):
        ELLMRec(ELLMRecConfig(base_model="/nowhere", readout="middle"), torch.zeros(3, 2))


# the plain loss on the same scores, which bf16 rounds to 8 bits as it is: the two then differ by the rounding of
# the softmax-weighted sum of items (8 bits) and of the target's score
BF16_TOL = 8 * 2**-8


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, BF16_TOL)])
@pytest.mark.parametrize("scale", [1.0, 60.0])  # 60: scores in the hundreds, which a softmax without its max overflows
@pytest.mark.parametrize("block", [7, 30])  # several blocks of items, the last one short; one block
def test_frozen_item_loss_is_the_cross_entropy_over_the_table(monkeypatch, dtype, tol, scale, block):
    monkeypatch.setattr(losses, "ITEM_BLOCK", block)
    g = torch.Generator().manual_seed(0)
    table = torch.randn(30, 8, generator=g).to(dtype)
    q = (torch.randn(5, 8, generator=g) * scale).to(dtype).requires_grad_()
    targets = torch.tensor([0, 29, 6, 7, 13])  # both ends of the table, both sides of a block's edge
    got = frozen_item_loss(q, table, targets)
    (2 * got).backward()
    ref_q = q.detach().clone().requires_grad_()
    scores = (ref_q @ table.T).float()
    ref = F.cross_entropy(scores, targets)
    (2 * ref).backward()
    assert math.isfinite(got.item()) and got.item() == pytest.approx(ref.item(), rel=tol, abs=tol)
    assert q.grad.dtype == dtype
    assert torch.allclose(q.grad.float(), ref_q.grad.float(), rtol=tol, atol=tol)
    # a real difference fails the same comparison: the loss of the targets one item over
    wrong = F.cross_entropy(scores.detach(), (targets + 1) % 30).item()
    assert wrong != pytest.approx(got.item(), rel=tol, abs=tol)


def test_the_model_item_loss_leaves_the_padding_row_out(tiny_lm_dir):
    model = randomised(tiny_model(tiny_lm_dir))
    h = torch.randn(4, model.base_lm().config.hidden_size, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([1, 5, 19, 20])
    model.item_loss(h, labels)  # the table's cast is made, then the table changes
    with torch.no_grad():
        model.item_embedding[0] = model.item_embedding[1:].sum(0)  # padding would score and take a real share
        assert model.item_loss(h, labels).item() == pytest.approx(
            item_loss(model.item_scores(h), labels).item(), rel=1e-5
        )
        with_padding = F.cross_entropy(model.item_scores(h), labels).item()
    assert model.item_loss(h, labels).item() != pytest.approx(with_padding, rel=1e-5)
