"""Training computes the instruction once per batch and packs the rows' real tokens after it (slmrec/packing.py):
the same loss, gradients and layer states as the instruction computed in every row of a padded batch, and as the
prompt laid out with all padding at the far left (SPEC §2), built here by hand; no row sees another's tokens."""

import dataclasses
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from slmrec.model import ELLMRec, ELLMRecConfig

PROMPT = dict(instruction="History of a user:", response="Next:")


def pair(lm_dir, **kw):
    """Two models with the same weights (LoRA's B random, so every LoRA weight gets a gradient), the
    instruction once per batch and in every row."""
    table = torch.randn(21, 8, generator=torch.Generator().manual_seed(1))
    cfg = ELLMRecConfig(base_model=str(lm_dir), num_layers=4, max_len=6, **{"lora_dropout": 0.0, **PROMPT, **kw})
    once = ELLMRec(cfg, table)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in once.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    rows = ELLMRec(dataclasses.replace(cfg, instruction_once=False), table)
    rows.load_state_dict(once.state_dict())
    return once.train(), rows.train()


HISTORY = torch.tensor([[0, 0, 0, 5, 9, 2], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7], [0, 3, 8, 1, 1, 4]])
EVERY = torch.tensor([[0, 0, 0, 9, 2, 11], [2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 0, 8], [0, 8, 1, 1, 4, 3]])
LAST = torch.tensor([11, 7, 8, 3])


def grads(model, labels):
    model.zero_grad()
    out = model(HISTORY, labels, layer_states=True)
    out["loss"].backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("readout", ["last_item", "response"])
@pytest.mark.parametrize("labels", [EVERY, LAST], ids=["every_position", "last_target"])
def test_loss_gradients_and_states_equal_the_per_row_instruction(tiny_lm_dir, readout, labels, attention):
    once, rows = pair(tiny_lm_dir, readout=readout, attention=attention)
    (a, ga), (b, gb) = grads(once, labels), grads(rows, labels)
    torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-5, atol=1e-6)
    assert ga.keys() == gb.keys() and any("lora_A" in n for n in ga)
    for n in ga:
        assert ga[n].abs().max() > 0, n
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-4, atol=1e-6, msg=n)
    for s, t in zip(a["states"], b["states"]):
        torch.testing.assert_close(s, t, rtol=1e-5, atol=1e-5)


def far_left_states(model, history, shift=0):
    """The final-norm states at every history column, from the prompt laid out as SPEC §2 states it: all
    padding at the far left of the whole sequence, position ids from the mask (the items' + shift: rotary
    phases are relative, so only a shift between the instruction and the items shows)."""
    table = model.lm.get_input_embeddings()
    B, L = history.shape
    P = len(model.prefix_ids)
    rows = []
    for r in range(B):
        real = history[r][history[r] != 0]
        pads = L - len(real)
        embeds = torch.cat(
            [torch.zeros(pads, table.weight.shape[1]), table(model.prefix_ids), model.w_in(model.item_embedding[real])]
        )
        mask = torch.tensor([0] * pads + [1] * (P + len(real)))
        positions = (mask.cumsum(0) - 1).clamp(min=0)
        positions[pads + P :] += shift
        out = model.lm(inputs_embeds=embeds[None], attention_mask=mask[None], position_ids=positions[None])
        rows.append(out.last_hidden_state[0, -L:])
    return torch.stack(rows)


def test_states_equal_the_far_left_layout_and_a_shifted_position_is_caught(tiny_lm_dir):
    once, _ = pair(tiny_lm_dir)
    once.eval()
    with torch.no_grad():
        h = once.encode(HISTORY, every_position=True)
        ref = far_left_states(once, HISTORY)
        shifted = far_left_states(once, HISTORY, shift=1)
    real = HISTORY != 0
    torch.testing.assert_close(h[real], ref[real], rtol=1e-5, atol=1e-5)
    assert (h[real] - shifted[real]).abs().max() > 1e-4  # the items one position late: 10x the tolerance


def test_a_row_attending_to_another_instruction_is_caught(tiny_lm_dir):
    """The cache is the instruction's: with another instruction's keys and values the states change."""
    once, _ = pair(tiny_lm_dir)
    once.eval()
    with torch.no_grad():
        right = once.encode(HISTORY)
        once.prefix_ids = once.prefix_ids.flip(0)
        wrong = once.encode(HISTORY)
    assert (right - wrong).abs().max() > 1e-3


def test_the_packed_layout_by_hand():
    """Two rows after an instruction of 2 tokens: [pad, a, b] and [c, d, e] pack as [i0 i1 a b c d e]."""
    from slmrec import packing

    pack = packing.layout(torch.tensor([[False, True, True], [True, True, True]]), 2)
    assert pack.flat.tolist() == [1, 2, 3, 4, 5]
    assert pack.index.tolist() == [[0, 2, 3], [4, 5, 6]]
    # b (row 0, column 2) sees i0, i1, a and itself; not the padding column, nothing of row 1
    assert pack.rows[0, 0, 2].tolist() == [True, True, False, True, True]
    assert pack.rows[1, 0, 1].tolist() == [True, True, True, True, False]
    assert pack.causal[0, 0].tolist() == [[True, False], [True, True]]
    x = torch.arange(7.0)[:, None]
    assert pack.gather(x)[..., 0].tolist() == [[0.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    additive = pack.mask("causal", torch.float32)
    assert additive[0, 0, 0, 1] == torch.finfo(torch.float32).min and additive[0, 0, 1].eq(0).all()


def test_a_row_sees_no_other_rows_tokens(tiny_lm_dir, monkeypatch):
    """Another row's items leave a row's states as they were; with a layout that gathers each row's attention
    from the row before it, they do not."""
    from slmrec import packing

    once, _ = pair(tiny_lm_dir)
    once.eval()
    other = HISTORY.clone()
    other[1] = torch.tensor([7, 7, 3, 2, 9, 9])
    keep = torch.arange(len(HISTORY)) != 1

    def states():
        with torch.no_grad():
            return once.encode(HISTORY, every_position=True)[keep], once.encode(other, every_position=True)[keep]

    torch.testing.assert_close(*states())
    layout = packing.layout

    def leaky(real, prefix):
        pack = layout(real, prefix)
        pack.index = pack.index.roll(1, 0)
        return pack

    monkeypatch.setattr(packing, "layout", leaky)
    mine, changed = states()
    assert (mine - changed).abs().max() > 1e-3


def test_length_groups_know_each_examples_length_and_stay_random(tiny_dataset):
    from transformers import TrainingArguments

    from slmrec.examples import Indexed, NextItemDataset, UserTargetDataset, WindowDataset
    from slmrec.training import RecTrainer

    for examples in (WindowDataset(tiny_dataset, 4), NextItemDataset(tiny_dataset, 4)):
        real = [int((examples[i]["input_ids"] != 0).sum()) for i in range(len(examples))]
        assert examples.lengths().tolist() == real == Indexed(examples).lengths().tolist()
    users = UserTargetDataset(tiny_dataset, 4)
    assert all(int((users[i]["input_ids"] != 0).sum()) <= n for i, n in enumerate(users.lengths()))

    lengths = torch.arange(400) % 37 + 1
    examples = type("Examples", (), {"lengths": lambda self: lengths.numpy(), "__len__": lambda self: 400})()

    def batches(group):
        args = TrainingArguments("unused", per_device_train_batch_size=8, use_cpu=True, report_to=[])
        trainer = RecTrainer.__new__(RecTrainer)
        trainer.args, trainer.train_dataset, trainer.group_by_length = args, examples, group
        order = torch.tensor(list(iter(trainer._get_train_sampler())))
        assert sorted(order.tolist()) == list(range(400))  # every example once
        return lengths[order].view(-1, 8)

    torch.manual_seed(0)
    grouped, again = batches(True), batches(True)
    spread = lambda b: (b.max(1).values - b.min(1).values).float().mean()
    assert spread(grouped) < 5 < 20 < spread(batches(False))  # like lengths together; a shuffle mixes them
    assert not torch.equal(grouped, again)  # a new order every epoch


def test_lora_without_peft_casts_computes_the_same_bf16_step(tiny_lm_dir):
    """The adapters take a bf16 input as it comes (ELLMRec sets peft's cast_input_dtype_enabled off): under bf16
    autocast the loss and every gradient equal those with peft's cast to fp32, the same masks drawn (both through
    transformers' forward: the fused one requires the cast off)."""
    model = ELLMRec(
        ELLMRecConfig(base_model=str(tiny_lm_dir), num_layers=2, max_len=6, lora_dropout=0.25, fused=False, **PROMPT),
        torch.randn(21, 8, generator=torch.Generator().manual_seed(1)),
        precision="bf16",
    ).train()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    lora = [m for m in model.lm.modules() if hasattr(m, "cast_input_dtype_enabled")]

    def run(cast):
        for m in lora:
            m.cast_input_dtype_enabled = cast
        model.zero_grad()
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(HISTORY, EVERY)["loss"]
        loss.backward()
        return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    (a, ga), (b, gb) = run(False), run(True)
    assert len(lora) == 2 * 3 and a == b
    for n in ga:
        assert torch.equal(ga[n], gb[n]), n


def test_auto_attention_is_this_cpus_faster_one_measured_once(tmp_path, monkeypatch):
    """In bf16 on a CPU, --attention auto takes eager or SDPA as the measurement kept for this CPU says; the
    measurement runs once (none off Linux, where auto is eager); fp32 stays SDPA."""
    from slmrec import model as m

    real, calls = m._eager_speedup, []
    for speedup, choice in ((1.6, "eager"), (0.7, "sdpa")):
        monkeypatch.setenv("SLMREC_CACHE", str(tmp_path / choice))
        monkeypatch.setattr(m, "_eager_speedup", lambda dtype, s=speedup: calls.append(dtype) or s)
        on_linux = m.cpu_measurement("probe", lambda: 1) is not None
        got = [m.training_attention("auto", "bf16") for _ in range(3)]
        assert got == [choice if on_linux else "eager"] * 3
    assert calls == [torch.bfloat16] * (2 if on_linux else 0)
    assert m.training_attention("auto", "fp32") == "sdpa"
    assert 0 < real(torch.float32, reps=1)  # the real measurement runs


def test_lora_dropout_draws_cheap_masks_with_nn_dropouts_distribution(tiny_lm_dir):
    from slmrec.model import MaskDropout, training_attention

    model = ELLMRec(
        ELLMRecConfig(base_model=str(tiny_lm_dir), num_layers=2, max_len=6, lora_dropout=0.25, **PROMPT),
        torch.randn(21, 8),
    )
    masks = [m for m in model.modules() if isinstance(m, MaskDropout)]
    assert len(masks) == 2 * 3 and not any(type(m) is torch.nn.Dropout for m in model.modules())
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = masks[0].train()(x)
    dropped = (y == 0).float()
    assert abs(dropped.mean().item() - 0.25) < 4 * (0.25 * 0.75 / len(x)) ** 0.5  # the rate, to 4 sigma
    assert abs((dropped[:-1] * dropped[1:]).mean().item() - 0.25**2) < 0.003  # neighbours drawn apart
    assert abs(y.mean().item() - 1) < 0.01  # kept elements scaled to keep the mean
    assert torch.equal(masks[0].eval()(x), x)
    assert training_attention("auto", None) == "sdpa" == training_attention("auto", "fp32")
    assert training_attention("sdpa", "bf16") == "sdpa"


def fused_pair(lm_dir, **kw):
    """The same model through slmrec/fused.py and through transformers' forward of the same packed batch."""
    fast, _ = pair(lm_dir, **kw)
    slow = ELLMRec(dataclasses.replace(fast.cfg, fused=False), fast.item_embedding)
    slow.load_state_dict(fast.state_dict())
    return fast, slow.train()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("labels", [EVERY, LAST], ids=["every_position", "last_target"])
def test_the_fused_forward_is_transformers_forward(tiny_lm_dir, labels, attention, monkeypatch):
    from slmrec import fused

    fast, slow = fused_pair(tiny_lm_dir, readout="response", attention=attention)
    calls, real = [], fused.FusedForward.forward
    monkeypatch.setattr(fused.FusedForward, "forward", lambda self, *a: calls.append(1) or real(self, *a))
    (a, ga), (b, gb) = grads(fast, labels), grads(slow, labels)
    assert len(calls) == 1  # the fast model's step went through it, the other's did not
    torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-5, atol=1e-6)
    for n in ga:
        assert ga[n].abs().max() > 0, n
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-4, atol=1e-6, msg=n)
    for s, t in zip(a["states"], b["states"]):
        torch.testing.assert_close(s, t, rtol=1e-5, atol=1e-5)


def test_the_fused_forward_draws_peft_s_dropout_masks(tiny_lm_dir):
    """LoRA's dropout in the fused forward: a step's random bits drawn at once, split in the order transformers'
    forward draws them one projection at a time, so from one seed both drop the same elements (fp32); from
    another seed the step differs."""
    fast, slow = fused_pair(tiny_lm_dir, lora_dropout=0.25)

    def loss(model, seed):
        torch.manual_seed(seed)
        return model(HISTORY, EVERY)["loss"]

    with torch.no_grad():
        torch.testing.assert_close(loss(fast, 0), loss(slow, 0), rtol=1e-5, atol=1e-6)
        assert (loss(fast, 0) - loss(fast, 1)).abs() > 1e-4
        assert (loss(fast.eval(), 0) - loss(fast, 1)).abs() < 1e-7  # no dropout in eval


def test_the_fused_forward_is_transformers_forward_in_bf16_with_dropout(tiny_lm_dir):
    """Under bf16 autocast with LoRA's dropout, the fused forward (the input cast once, each update added in its
    product with the dropout's scale folded in) gives transformers' loss and gradients from one seed to bf16's
    rounding; every gradient from another seed (other masks) is farther off than that."""
    fast, slow = fused_pair(tiny_lm_dir, lora_dropout=0.25)
    for m in (fast, slow):
        m.cast_frozen(torch.bfloat16)

    def step(model, seed):
        torch.manual_seed(seed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return grads(model, EVERY)

    (a, ga), (b, gb), (_, gc) = step(fast, 0), step(slow, 0), step(fast, 1)
    torch.testing.assert_close(a["loss"], b["loss"], rtol=2e-3, atol=0)
    for n in ga:  # relative errors: about 1% from one seed, 9-120% from another
        same, other = ((g[n] - gb[n]).norm() / gb[n].norm() for g in (ga, gc))
        assert same < 0.03 and other > 0.06, (n, same, other)


def test_grouped_eager_attention_is_transformers_eager_attention():
    """The packed eager attention's inner function for LLaMA-architecture LMs (query heads stacked per key/value
    head, no repeated keys and values) against transformers' eager_attention_forward: outputs and the gradients
    of q, k and v to fp32's rounding, with grouped-query heads and a padding mask; query heads paired with the
    wrong key/value head are caught."""
    import types

    from transformers.models.llama.modeling_llama import eager_attention_forward

    from slmrec.packing import grouped_eager

    g = torch.Generator().manual_seed(6)
    q = torch.randn(3, 6, 5, 8, generator=g).requires_grad_()  # 6 query heads, 2 key/value heads
    k, v = (torch.randn(3, 2, 9, 8, generator=g).requires_grad_() for _ in range(2))
    keep = torch.ones(5, 9, dtype=torch.bool).tril(4)[None, None].repeat(3, 1, 1, 1)
    keep[1, :, :, :2] = False  # a row with padding
    mask = torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    module = types.SimpleNamespace(num_key_value_groups=3, training=True)
    (a, _), (b, _) = (f(module, q, k, v, mask, scaling=0.3) for f in (grouped_eager, eager_attention_forward))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    out = torch.randn(a.shape, generator=g)
    for x, y in zip(torch.autograd.grad(a, (q, k, v), out), torch.autograd.grad(b, (q, k, v), out)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    swapped = torch.cat([q[:, 3:], q[:, :3]], 1)  # heads 0-2 against the second key/value head
    c, _ = grouped_eager(module, swapped, k, v, mask, scaling=0.3)
    assert not torch.allclose(torch.cat([c[:, :, 3:], c[:, :, :3]], 2), b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_is_transformers_llama_rms_norm(dtype):
    """decoder.rms_norm (torch's fused kernel for an fp32 input and weight, the written-out formula otherwise)
    against transformers' LlamaRMSNorm: values and the input's gradient to the dtype's rounding; a norm with
    another eps is caught."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from slmrec.decoder import rms_norm

    ref = LlamaRMSNorm(64, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(64, generator=torch.Generator().manual_seed(3)))
    x = (torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(4)) * 3).to(dtype).requires_grad_()
    g = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(5))
    ours, theirs = rms_norm(x, ref.weight.detach(), 1e-5), ref(x)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(ours, theirs, **tol)
    (a,), (b,) = (torch.autograd.grad(y, x, g.to(y.dtype)) for y in (ours, theirs))
    torch.testing.assert_close(a, b, **tol)
    assert not torch.allclose(rms_norm(x, ref.weight.detach(), 1.0), theirs, **tol)


def test_lora_dropout_masks_use_16_bits_an_element_and_follow_torch_s_seed():
    """MaskDropout's keep masks: every 16-bit value can be drawn (four a 64-bit draw), the drop rate is
    round(p * 2^16) / 2^16, the mask is 0 or 1 in the dtype asked for, and torch's seed decides it; p outside
    [0, 1) is refused up front."""
    from slmrec.errors import FlagError
    from slmrec.fused import MaskDropout, random_bits

    bits = random_bits(1_000_003)
    assert bits.dtype == np.uint16 and bits.shape == (1_000_003,)
    assert bits.min() == 0 and bits.max() == 2**16 - 1
    drop = MaskDropout(0.05)
    assert drop.threshold == 3277
    torch.manual_seed(0)
    keep = drop.keep((1000, 1000), torch.bfloat16)
    assert keep.dtype == torch.bfloat16 and set(keep.unique().tolist()) == {0.0, 1.0}
    rate = 1 - keep.float().mean().item()
    assert abs(rate - 3277 / 2**16) < 4 * (0.05 * 0.95 / keep.numel()) ** 0.5
    torch.manual_seed(0)
    assert torch.equal(drop.keep((1000, 1000), torch.float32), keep.float())
    assert not torch.equal(drop.keep((1000, 1000), torch.bfloat16), keep)  # the next draw differs
    x = torch.randn(1000, 1000)
    torch.manual_seed(1)
    y = drop.train()(x)
    torch.manual_seed(1)
    assert torch.equal(y, torch.where(drop.keep(x.shape, x.dtype) > 0, x * (2**16 / (2**16 - 3277)), 0))
    assert torch.equal(MaskDropout(0.0).train()(x), x)
    for p in (1.0, -0.1):
        with pytest.raises(FlagError, match="lora_dropout"):
            ELLMRecConfig(lora_dropout=p)


def test_the_fused_forward_only_where_it_computes_the_same(tiny_lm_dir):
    """Projections with peft's input cast, a merged or disabled adapter, or the LM set to an attention other than
    the packed one go through transformers' forward."""
    from slmrec import fused

    model, _ = pair(tiny_lm_dir)
    lm = model.base_lm()
    assert fused.supports(lm)
    up = lm.layers[0].mlp.up_proj
    for attr, value in (("cast_input_dtype_enabled", True), ("disable_adapters", True)):
        old = getattr(up, attr)
        setattr(up, attr, value) if attr != "disable_adapters" else up.enable_adapters(False)
        assert not fused.supports(lm), attr
        setattr(up, attr, old) if attr != "disable_adapters" else up.enable_adapters(True)
    assert fused.supports(lm)
    lm.set_attn_implementation("sdpa")
    assert not fused.supports(lm)


def test_the_compiled_forward_computes_the_eager_one(tiny_lm_dir):
    """--compile true: the fused forward through torch.compile gives the eager step's loss and
    gradients (fp32, to the compiler's rounding), LoRA's dropout masks included; a gradient off by 1% would fail."""
    fast, _ = fused_pair(tiny_lm_dir, lora_dropout=0.25)
    compiled = ELLMRec(fast.cfg, fast.item_embedding)
    compiled.load_state_dict(fast.state_dict())
    compiled.compile_training = True

    def step(model, seed):
        torch.manual_seed(seed)
        return grads(model.train(), EVERY)

    for seed in (0, 1):  # the second step reuses the compiled graph
        (a, ga), (b, gb) = step(fast, seed), step(compiled, seed)
        torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-5, atol=1e-6)
        for n in ga:
            torch.testing.assert_close(ga[n], gb[n], rtol=1e-4, atol=1e-6, msg=n)
            assert not torch.allclose(ga[n] * 1.01, gb[n], rtol=1e-4, atol=1e-6) or ga[n].abs().max() == 0


def test_compile_is_refused_before_any_work_without_a_compiler_and_may_change_on_resume(monkeypatch):
    from slmrec import machine, training
    from slmrec.checkpoints import settings_changed
    from slmrec.errors import FlagError
    from slmrec.training import TrainConfig

    monkeypatch.setattr(machine.shutil, "which", lambda name: None)
    monkeypatch.setattr(training, "compute_device", lambda: "cpu")
    with pytest.raises(FlagError, match="--compile true: torch.compile needs a C"):
        TrainConfig(compile=True)
    TrainConfig(compile=False)
    before = {"train": {"compile": False, "seed": 1}}
    assert settings_changed(before, {"train": {"compile": True, "seed": 1}}) == []
    assert settings_changed(before, {"train": {"compile": True, "seed": 2}}) == ["train.seed: 1 -> 2"]


FAULTS = """
import resource, sys, torch
from slmrec.runtime import keep_freed_memory
assert keep_freed_memory() if sys.argv[1] == "kept" else True
def one_step():  # a step's worth of buffers of mixed sizes (132 MB), made and freed
    buffers = [torch.ones(n << 18) for n in [4, 8, 2, 12, 1, 6] * 4]
    del buffers
one_step()  # the heap's growth
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
one_step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_training_keeps_freed_memory_for_the_next_step_instead_of_faulting_it_in_again():
    faults = {
        arm: int(subprocess.run([sys.executable, "-c", FAULTS, arm], capture_output=True, text=True, check=True).stdout)
        for arm in ("default", "kept")
    }
    pages = 132 * 2**20 // 4096
    assert faults["default"] > pages / 2  # glibc handed the freed heap back: the next step faults it in again
    assert faults["kept"] < pages / 8
