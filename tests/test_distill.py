import dataclasses
import json
import math

import pytest
import safetensors.torch
import torch

import distill
from benchmarks import loss_scales
from conftest import synthetic_rows, write_amazon_csv
from slmrec.prepare import PrepareConfig, prepare
from slmrec.distill import DistillConfig, DistillTrainer, caches_teacher, distill_loss, student_config, teacher_states
from slmrec.examples import ExampleConfig, training_examples
from slmrec.losses import block_pairs, cosine_loss, logit_kd_loss, norm_loss
from slmrec.model import ELLMRec, load_ellmrec
from slmrec.metrics import METRICS
from slmrec.checkpoints import CheckpointError
from slmrec.training import TrainConfig, training_arguments
from slmrec.errors import FlagError
from helpers import TINY_TRAIN, student_and_teacher, tiny_model


# ---------------------------------------------------------------- the loss terms, by hand


def fixed_states(blocks, batch=3, dim=5):
    g = torch.Generator().manual_seed(blocks)
    return (
        [torch.randn(batch, dim, generator=g) for _ in range(blocks)],
        [torch.randn(batch, dim, generator=g) for _ in range(blocks)],
    )


@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_feature_losses_match_hand_written_sums(blocks):
    t, s = fixed_states(blocks)
    cos, sq, unsq = 0.0, 0.0, 0.0
    for k in range(blocks):
        for b in range(3):
            a, c = t[k][b].tolist(), s[k][b].tolist()
            dot = sum(x * y for x, y in zip(a, c))
            na, nc = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in c))
            dist2 = sum((x - y) ** 2 for x, y in zip(a, c))
            cos += (1 - dot / (na * nc)) / (3 * blocks)
            sq += dist2 / (3 * blocks)
            unsq += math.sqrt(dist2) / (3 * blocks)
    assert cosine_loss(t, s).item() == pytest.approx(cos, rel=1e-5)
    assert norm_loss(t, s).item() == pytest.approx(sq, rel=1e-5)
    assert norm_loss(t, s, "unsquared").item() == pytest.approx(unsq, rel=1e-5)
    assert cosine_loss(t, t).item() == pytest.approx(0, abs=1e-6) and norm_loss(t, t).item() == 0


@pytest.mark.parametrize("blocks", [2, 4])
def test_multi_supervision_is_the_mean_item_loss_of_the_intermediate_heads(tiny_lm_dir, blocks):
    teacher = tiny_model(tiny_lm_dir, num_layers=4)
    student = ELLMRec(student_config(teacher.cfg, 4, DistillConfig("", blocks=blocks)), teacher.item_embedding)
    g = torch.Generator().manual_seed(0)
    for head in student.adapters:
        torch.nn.init.normal_(head.weight, generator=g)
    states = [torch.randn(3, student.base_lm().config.hidden_size, generator=g) for _ in range(4)]
    labels = torch.tensor([1, 4, 6])
    expected = 0.0
    assert student.cfg.adapter_layers == [4 // blocks * k for k in range(1, blocks)]
    for layer, head in zip(student.cfg.adapter_layers, student.adapters):
        with torch.no_grad():
            scores = head(states[layer - 1]) @ student.item_embedding.T
        for b, y in enumerate(labels.tolist()):
            row = scores[b, 1:].tolist()  # column 0 (padding) never competes
            expected += (math.log(sum(math.exp(v) for v in row)) - scores[b, y].item()) / (3 * (blocks - 1))
    with torch.no_grad():
        assert student.multi_supervision_loss(states, labels).item() == pytest.approx(expected, rel=1e-5)


def test_logit_kd_is_kl_of_item_distributions():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g)
    T = 2.0
    expected = 0.0
    for b in range(2):
        pt = torch.softmax(t[b, 1:] / T, 0).tolist()
        ps = torch.softmax(s[b, 1:] / T, 0).tolist()
        expected += sum(p * math.log(p / q) for p, q in zip(pt, ps)) / 2 * T * T
    assert logit_kd_loss(t, s, T).item() == pytest.approx(expected, rel=1e-5)
    assert logit_kd_loss(t, t, T).item() == pytest.approx(0, abs=1e-6)


def test_block_pairs():
    assert block_pairs(8, 4, 4) == [(2, 1), (4, 2), (6, 3), (8, 4)]
    assert block_pairs(8, 4, 2) == [(4, 2), (8, 4)]
    assert block_pairs(8, 4, 1) == [(8, 4)]
    for bad in [(8, 4, 3), (8, 6, 4), (8, 4, 0)]:
        with pytest.raises(ValueError, match="must divide"):
            block_pairs(*bad)


# ---------------------------------------------------------------- on a tiny model


@pytest.mark.exactness
def test_pairing_uses_teacher_layer_km_and_student_layer_kn(tiny_dataset, tiny_teacher, tmp_path, monkeypatch):
    teacher = load_ellmrec(tiny_teacher, tiny_dataset)
    dcfg = DistillConfig(str(tiny_teacher), blocks=2, lambda_norm=0.0, lambda_ms=0.0)
    student = ELLMRec(student_config(teacher.cfg, 4, dcfg), teacher.item_embedding)
    seen = {}

    def spy(t_feats, s_feats):
        seen["t"], seen["s"] = t_feats, s_feats
        return torch.zeros(())

    monkeypatch.setattr("slmrec.distill.cosine_loss", spy)
    args = training_arguments(TrainConfig(eval_steps=10), tmp_path / "x")
    trainer = DistillTrainer(
        model=student,
        args=args,
        train_dataset=[0],
        eval_dataset=[0],
        data=tiny_dataset,
        max_len=6,
        teacher=teacher,
        distill=dcfg,
    )
    x = torch.tensor([[0, 0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10]])
    trainer.compute_loss(student.eval(), {"input_ids": x, "labels": torch.tensor([5, 11])})
    with torch.no_grad(), trainer.accelerator.autocast():  # the same precision compute_loss runs in
        _, t_states = teacher.encode(x, layer_states=True)
        _, s_states = student.encode(x, layer_states=True)
    assert torch.equal(seen["t"][0], t_states[3]) and torch.equal(seen["t"][1], t_states[7])  # layers 4, 8
    assert torch.equal(seen["s"][0], s_states[1]) and torch.equal(seen["s"][1], s_states[3])  # layers 2, 4


def test_offline_distillation_trains_student_only(tiny_dataset, tiny_teacher, tmp_path):
    before = {k: v.clone() for k, v in load_ellmrec(tiny_teacher).state_dict().items()}
    out = tmp_path / "student"
    distill.main(
        str(tiny_teacher),
        str(tiny_dataset.path),
        str(out),
        num_layers=4,
        blocks=4,
        **{k: v for k, v in TINY_TRAIN.items() if k not in ("num_layers", "max_len", "instruction", "response")},
    )
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert 0 <= metrics["NDCG@10"] <= 1
    # the saved student scores alone and has 4 layers and 3 adapter heads (after layers 1, 2, 3)
    student = load_ellmrec(out, tiny_dataset)
    assert student.cfg.num_layers == 4 and student.cfg.adapter_layers == [1, 2, 3]
    after = load_ellmrec(tiny_teacher).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    logs = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    train_logs = [e for e in logs if "loss" in e]
    assert {"loss_ce", "loss_cos", "loss_norm", "loss_ms"} <= train_logs[0].keys()


def test_teacher_forward_runs_in_the_training_precision(tiny_dataset, tiny_teacher, tmp_path, monkeypatch):
    seen = []  # (autocast on, its dtype) at every encode call: the student's and the teacher's
    encode = ELLMRec.encode

    def spy(self, *args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(ELLMRec, "encode", spy)
    train = {k: v for k, v in TINY_TRAIN.items() if k not in ("num_layers", "max_len", "instruction", "response")}
    distill.main(str(tiny_teacher), str(tiny_dataset.path), str(tmp_path / "s"), **{**train, "precision": "bf16"})
    # Every training step encodes with the student and the (live) teacher; validation scores through the fast
    # path (training.ranking), which does not call encode.
    assert len(seen) == 2 * train["max_steps"] and set(seen) == {(True, torch.bfloat16)}


def test_online_and_logit_modes_run(tiny_dataset, tiny_teacher, tmp_path, monkeypatch):
    train = {k: v for k, v in TINY_TRAIN.items() if k not in ("num_layers", "max_len", "instruction", "response")}
    # The online teacher is the optimizer's last parameter group: its gradient must be clipped like the
    # student's before every step and cleared after it (not summed over all steps so far).
    norms, teacher_params, step = [], [], torch.optim.AdamW.step

    def spy(opt, *args, **kwargs):
        teacher_params[:] = opt.param_groups[-1]["params"]
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in teacher_params])).item())
        return step(opt, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    distill.main(str(tiny_teacher), str(tiny_dataset.path), str(tmp_path / "on"), kd_mode="online", **train)
    monkeypatch.undo()
    assert len(norms) == 4 and max(norms) <= 1.0 + 1e-4
    assert all(p.grad is None for p in teacher_params)
    assert (tmp_path / "on" / "teacher" / "model.safetensors").is_file()
    logs = json.loads((tmp_path / "on" / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    assert "loss_teacher_ce" in next(e for e in logs if "loss" in e)
    distill.main(
        str(tiny_teacher), str(tiny_dataset.path), str(tmp_path / "kl"), lambda_kl=1.0, temperature=2.0, **train
    )
    logs = json.loads((tmp_path / "kl" / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    assert "loss_kl" in next(e for e in logs if "loss" in e)


def test_bad_setups_are_refused_before_training(tiny_dataset, tiny_teacher, tmp_path):
    with pytest.raises(ValueError, match="must divide"):
        distill.main(str(tiny_teacher), str(tiny_dataset.path), str(tmp_path / "a"), num_layers=4, blocks=3)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        distill.main(str(tmp_path / "missing"), str(tiny_dataset.path), str(tmp_path / "b"))
    other = write_amazon_csv(tmp_path / "other.csv", synthetic_rows(seed=9))
    prepare(PrepareConfig(str(other), num_negatives=15), tmp_path / "other")
    with pytest.raises(CheckpointError, match="was trained on dataset"):
        distill.main(str(tiny_teacher), str(tmp_path / "other"), str(tmp_path / "c"))
    with pytest.raises(ValueError, match="kd_mode"):
        distill.main(str(tiny_teacher), str(tiny_dataset.path), str(tmp_path / "d"), kd_mode="sideways")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_loss_scale_report(tiny_dataset, tiny_teacher, capsys):
    loss_scales.main(str(tiny_teacher), str(tiny_dataset.path), batches=2, batch_size=8)
    rows = {
        line.split(" | ")[0].lstrip("| "): line.split(" | ")
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| ") and not line.startswith("| term")
    }
    # A fresh student's heads start at zero: uniform scores, so its item losses are exactly ln|I|.
    for term in ("ce", "ms"):
        assert float(rows[term][1]) == pytest.approx(math.log(tiny_dataset.num_items), rel=1e-3)
    squared = float(rows["norm (squared)"][1].replace(",", ""))
    unsquared = float(rows["norm (unsquared)"][1].replace(",", ""))
    assert squared > 0 and unsquared > 0 and float(rows["norm (unsquared)"][2]) == DistillConfig.lambda_norm
    assert 0.5 < float(rows["norm (relative)"][1]) < 4  # of the item loss's order, unlike the squared form


# ---------------------------------------------------------------- the teacher-state cache


# fp32 rounding when a batch's sums are taken in another order: the cache is built from other batches (other
# shapes) than the one a step draws, and CPU matmul kernels block, and so round, by shape. Measured: 1e-7
# relative on the losses, up to 6e-8 absolute on gradients of norm ~1e-2 (AMD Zen 5); 1e-5 leaves ~100x
# room and is still far below what any real difference in the teacher gives (test below).
FP32_REL = 1e-5


def agree(a, b, rel=FP32_REL) -> bool:
    """Tensors equal up to rounding: the difference's norm within rel of the reference's norm."""
    return a.shape == b.shape and bool(
        torch.linalg.vector_norm((a - b).double()) <= rel * torch.linalg.vector_norm(b.double()) + 1e-30
    )


def _step(student, teacher, dcfg, pairs, x, y, cached):
    """(terms with the total under "total", gradients) of one distillation step."""
    student.zero_grad()
    torch.manual_seed(2)  # the same LoRA dropout masks
    loss, terms, _ = distill_loss(student, teacher, dcfg, pairs, x, y, cached)
    loss.backward()
    return (
        {"total": loss.detach(), **{k: v.detach() for k, v in terms.items()}},
        {k: p.grad.clone() for k, p in student.named_parameters() if p.grad is not None},
    )


def _same(a, b, compare) -> bool:
    return (
        a[0].keys() == b[0].keys()
        and a[1].keys() == b[1].keys()
        and all(compare(a[i][k], b[i][k]) for i in range(2) for k in a[i])
    )


@pytest.mark.exactness
@pytest.mark.parametrize(
    "objective,positions,lambda_kl",
    [
        ("every_position", "all", 0.0),
        ("every_position", "final", 0.0),
        ("every_position", "final", 0.5),
        ("last_target", "final", 0.0),
    ],
)
def test_cached_teacher_states_give_the_live_losses_and_gradients(
    tiny_dataset, tiny_teacher, tmp_path, objective, positions, lambda_kl
):
    dcfg = DistillConfig(
        str(tiny_teacher),
        blocks=2,
        feature_positions=positions,
        lambda_kl=lambda_kl,
        state_cache=str(tmp_path / "cache"),
    )
    teacher, student = student_and_teacher(tiny_dataset, tiny_teacher, dcfg)
    examples = training_examples(tiny_dataset, 6, ExampleConfig(objective=objective))
    pairs = block_pairs(8, 4, 2)
    states = teacher_states(dcfg, teacher, tiny_dataset, examples, pairs, "fp32", tmp_path, batch_size=16)
    assert caches_teacher(dcfg, ExampleConfig(objective=objective))
    # a run shorter than one pass over the examples would pay more for the cache than it saves
    assert not caches_teacher(dcfg, ExampleConfig(objective=objective), len(examples), len(examples) - 1)
    assert caches_teacher(dcfg, ExampleConfig(objective=objective), len(examples), len(examples))

    def batch(index):
        return (
            torch.stack([examples[int(i)]["input_ids"] for i in index]),
            torch.stack([examples[int(i)]["labels"] for i in index]),
        )

    # The cache's own first build batch: the teacher runs the same operations on the same shapes live as it did
    # for the cache, so the step is the same bit for bit on any CPU.
    first = torch.arange(16)
    live = _step(student, teacher, dcfg, pairs, *batch(first), None)
    assert "kl" in live[0] if lambda_kl > 0 else "kl" not in live[0]
    assert _same(live, _step(student, teacher, dcfg, pairs, *batch(first), states.rows(first)), torch.equal)
    # A shuffled batch of 8: other shapes than any build batch, so equal up to fp32 rounding.
    index = torch.randperm(len(examples), generator=torch.Generator().manual_seed(1))[:8]
    live = _step(student, teacher, dcfg, pairs, *batch(index), None)
    assert _same(live, _step(student, teacher, dcfg, pairs, *batch(index), states.rows(index)), agree)
    # The check catches a real difference: a teacher with one frozen weight matrix of its first layer 10% larger
    # (which moves the tiny random LM's states by ~1e-4 of their size: 10x the tolerance).
    with torch.no_grad():
        teacher.base_lm().layers[0].mlp.up_proj.base_layer.weight.mul_(1.1)
    assert not _same(
        _step(student, teacher, dcfg, pairs, *batch(index), None),
        _step(student, teacher, dcfg, pairs, *batch(index), states.rows(index)),
        agree,
    )


def test_a_cache_made_for_other_inputs_is_rebuilt_not_read(tiny_dataset, tiny_teacher, tmp_path, monkeypatch):
    from slmrec import teacher_cache

    builds = []
    build = teacher_cache.build
    monkeypatch.setattr(
        teacher_cache, "build", lambda path, key, *a, **k: builds.append(key) or build(path, key, *a, **k)
    )
    dcfg = DistillConfig(str(tiny_teacher), blocks=2, state_cache=str(tmp_path / "cache"))
    teacher, _ = student_and_teacher(tiny_dataset, tiny_teacher, dcfg)
    examples = training_examples(tiny_dataset, 6, ExampleConfig())
    pairs = block_pairs(8, 4, 2)

    def states(**changes):
        d = dataclasses.replace(dcfg, **changes.pop("dcfg", {}))
        args = {**dict(examples=examples, pairs=pairs, precision="fp32"), **changes}
        return teacher_states(d, teacher, tiny_dataset, args["examples"], args["pairs"], args["precision"], tmp_path)

    first = states()
    assert len(builds) == 1 and states().path == first.path and len(builds) == 1  # the same inputs: read
    states(pairs=block_pairs(8, 4, 4))  # other layers
    states(dcfg={"feature_positions": "final"})  # other rows
    states(precision="bf16")  # another dtype
    states(examples=training_examples(tiny_dataset, 5, ExampleConfig()))  # other examples
    assert len(builds) == 5 and len({json.dumps(k, sort_keys=True) for k in builds}) == 5
    # the teacher's weights change (same path): another key
    weights = tiny_teacher / "model.safetensors"
    state = safetensors.torch.load_file(weights)
    state["w_out.weight"] = state["w_out.weight"] + 1
    safetensors.torch.save_file(state, weights, metadata={"format": "pt"})
    assert states().path != first.path and len(builds) == 6
    # a folder whose recorded key is not the one its name stands for, or a truncated file: rebuilt
    meta = json.loads((first.path / "meta.json").read_text())
    meta["key"]["rows"] = "final"
    (first.path / "meta.json").write_text(json.dumps(meta))
    restored = teacher_cache.load_or_build(
        first.path.parent, first.meta["key"], teacher, examples, torch.autocast("cpu", enabled=False)
    )
    assert len(builds) == 7 and restored.path == first.path
    with open(first.path / "states.bin", "r+b") as fh:
        fh.truncate(8)
    teacher_cache.load_or_build(
        first.path.parent, first.meta["key"], teacher, examples, torch.autocast("cpu", enabled=False)
    )
    assert len(builds) == 8


@pytest.mark.exactness
def test_distillation_with_the_cache_trains_as_with_the_live_teacher(tiny_dataset, tiny_teacher, tmp_path):
    train = {k: v for k, v in TINY_TRAIN.items() if k not in ("num_layers", "max_len", "instruction", "response")}
    train["max_steps"] = 8  # 64 examples: at least the one pass over the 60 windows that a cache costs
    train["patience"] = 0  # all eight steps, whatever the validations say
    distill.main(str(tiny_teacher), str(tiny_dataset.path), str(tmp_path / "live"), teacher_states="live", **train)
    distill.main(str(tiny_teacher), str(tiny_dataset.path), str(tmp_path / "cached"), **train)  # auto
    live, cached = (json.loads((tmp_path / d / "test_metrics.json").read_text()) for d in ("live", "cached"))
    assert "teacher_states" not in live and cached["teacher_states"].startswith(str(tiny_teacher / "state_cache"))
    assert cached["teacher_states_build_seconds"] > 0
    # Eight steps from gradients equal up to fp32 rounding: the per-step losses agree to rounding, the weights too
    # (AdamW divides by the gradients' own scale, so an entry whose gradient is near zero can move by up to the
    # learning rate times the steps in one run and not the other: the weights are compared as a whole).
    losses = [
        [
            e["loss"]
            for e in json.loads((tmp_path / d / "checkpoint-8" / "trainer_state.json").read_text())["log_history"]
            if "loss" in e
        ]
        for d in ("live", "cached")
    ]
    assert len(losses[0]) == len(losses[1]) > 0 and agree(torch.tensor(losses[1]), torch.tensor(losses[0]))
    a, b = (safetensors.torch.load_file(tmp_path / d / "model.safetensors") for d in ("live", "cached"))
    assert a.keys() == b.keys() and all(agree(b[k], a[k], 1e-4) for k in a)
    assert {k: live[k] for k in METRICS} == pytest.approx({k: cached[k] for k in METRICS}, abs=1e-9)
    distill.main(str(tiny_teacher), str(tiny_dataset.path), str(tmp_path / "short"), **{**train, "max_steps": 4})
    assert "teacher_states" not in json.loads((tmp_path / "short" / "test_metrics.json").read_text())
    # a cache over its size budget is not built: the live teacher trains the student, as it would without one
    distill.main(
        str(tiny_teacher),
        str(tiny_dataset.path),
        str(tmp_path / "big"),
        state_cache_max_gb=0,
        state_cache=str(tmp_path / "other_cache"),
        **train,
    )
    assert "teacher_states" not in json.loads((tmp_path / "big" / "test_metrics.json").read_text())
    assert not (tmp_path / "other_cache").exists()
    with pytest.raises(FlagError, match="teacher_states cache needs offline KD"):
        distill.main(
            str(tiny_teacher),
            str(tiny_dataset.path),
            str(tmp_path / "x"),
            teacher_states="cache",
            kd_mode="online",
            **train,
        )
