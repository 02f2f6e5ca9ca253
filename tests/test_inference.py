"""The fast inference path against the plain one, exact weight casts, recommend.py and its errors."""

import json

import numpy as np
import pytest
import torch

import evaluate as evaluate_cli
import recommend
from slmrec.batches import left_pad
from slmrec.errors import DataError
from slmrec.decoder import Decoder
from slmrec.inference import FastELLMRec, InferenceConfig, TransformersForward, load_scorer
from slmrec.recommender import Recommender
from slmrec.metrics import rank_users
from slmrec.seqrec import SeqRecConfig, build_seqrec
from slmrec.checkpoints import CheckpointError, save_model
from slmrec.training import ranking
from slmrec.errors import FlagError
from slmrec.flags import split_flags
from helpers import random_ellmrec


def histories():
    x = torch.randint(1, 21, (5, 6), generator=torch.Generator().manual_seed(3))
    x[0, :5], x[1, :2], x[2, :1] = 0, 0, 0  # lengths 1, 4, 5, 6, 6
    return x


@pytest.mark.parametrize("token_block", [1024, 8])
@pytest.mark.parametrize("decoder", [True, False])
@pytest.mark.parametrize("readout", ["last_item", "response"])
def test_fast_path_equals_plain_scores(readout, decoder, token_block):
    """Both LM passes of the fast path (the project's LLaMA forward, transformers' own) give model.score's
    scores within fp32 rounding, whole or in blocks of rows (8 tokens: blocks of 2, 2 and 1 histories)."""
    model = random_ellmrec(20, readout=readout)
    x = histories()
    with torch.no_grad():
        ref = model.score(x)
    fast = FastELLMRec(model, InferenceConfig(precision="fp32", decoder=decoder, token_block=token_block))
    assert isinstance(fast.forward, Decoder if decoder else TransformersForward)
    assert not hasattr(model.lm, "peft_config")
    torch.testing.assert_close(fast(x), ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="empty history"):
        fast(torch.zeros(1, 6, dtype=torch.long))


def test_decoder_in_bf16_is_as_close_to_fp32_as_transformers():
    """In bf16 the project's forward and transformers' may round differently (fused products, the last layer's
    one row): the project's is no further from the fp32 scores than transformers' (1.5x its norm-wise error
    allows for a different rounding), and a model with one weight matrix 30% off is (a smaller change is within
    bf16's own noise on this random model: 10% moves the fp32 scores by 0.016, bf16 by 0.018)."""
    x = histories()
    with torch.no_grad():
        ref = random_ellmrec(20).score(x)
    scores = {d: FastELLMRec(random_ellmrec(20), InferenceConfig(precision="bf16", decoder=d))(x) for d in (1, 0)}
    off = random_ellmrec(20)
    off.base_lm().layers[1].mlp.up_proj.base_layer.weight.data *= 1.3
    scores["off"] = FastELLMRec(off, InferenceConfig(precision="bf16"))(x)
    err = {k: float((v - ref).norm() / ref.norm()) for k, v in scores.items()}
    assert 0 < err[0] < 0.05 and err[1] <= 1.5 * err[0] < err["off"], err  # measured 0.018, 0.018, 0.058


def test_compiled_path_scores_as_eager_and_never_recompiles():
    """torch.compile of the LM pass: the eager scores within fp32 rounding, and after the one warm-up of
    construction, batches of 1 and of 5 and a history of one item run without compiling again."""
    x = histories()
    with torch.no_grad():
        ref = FastELLMRec(random_ellmrec(20), InferenceConfig(precision="fp32"))(x)
    torch._dynamo.reset()
    fast = FastELLMRec(random_ellmrec(20), InferenceConfig(precision="fp32", compile=True))
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = [fast(x), fast(x[:1]), fast(x[3:4]), fast(x[:1, -1:])]
        fast.token_block = 8  # blocks of 2, 2 and 1 rows: the same graph
        blocked = fast(x)
    torch.testing.assert_close(out[0], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(blocked, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(out[1:3]), ref[[0, 3]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[3], ref[:1], atol=1e-5, rtol=1e-5)


def test_without_a_cpp_compiler_nothing_compiles_by_default_and_asking_is_one_line(monkeypatch):
    """inductor builds C++ on a CPU: where no compiler is installed, the defaults (a large evaluation, serve.py)
    stay uncompiled instead of failing at their first batch, and --compile true is a flag error before any work."""
    import slmrec.inference as inference
    from slmrec import machine
    from slmrec.serving import configs

    monkeypatch.setattr(machine.shutil, "which", lambda name: None)
    cfg = inference.auto_compile(InferenceConfig(precision="bf16"), 10**6, "cpu")
    assert cfg.compile is False and configs({})[1].compile is False
    with pytest.raises(FlagError, match="C\\+\\+ compiler"):
        FastELLMRec(random_ellmrec(20), InferenceConfig(precision="fp32", compile=True))
    monkeypatch.undo()
    assert inference.auto_compile(InferenceConfig(precision="bf16"), 10**6, "cpu").compile is True
    assert inference.auto_compile(InferenceConfig(precision="bf16"), 10, "cpu").compile is False


def test_a_second_compiled_scorer_scores_with_its_own_weights():
    """Validation builds a compiled scorer on new weights every time and may reuse the compiled graph: its scores
    must be those of its own weights, not the first scorer's."""
    x = histories()
    torch._dynamo.reset()
    first = FastELLMRec(random_ellmrec(20), InferenceConfig(precision="fp32", compile=True))
    other = random_ellmrec(20)
    other.w_in.weight.data *= 1.5
    other.base_lm().layers[0].mlp.up_proj.base_layer.weight.data *= 1.5
    with torch.no_grad():
        ref = other.score(x)
    second = FastELLMRec(other, InferenceConfig(precision="fp32", compile=True))
    torch.testing.assert_close(second(x), ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(first(x), ref, atol=1e-3)


def test_validation_path_compiled_under_bf16_autocast_leaves_lora_unmerged():
    """What training validates with on a large dataset (training.ranking, compiled): LoRA folded into copies, the
    model's own modules untouched, scores within bf16 rounding of the eager path's."""
    x = histories()
    cfg = dict(precision="bf16", merge_lora=False, residual="fp32", attention="keep")
    eager_model, model = random_ellmrec(20), random_ellmrec(20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = FastELLMRec(eager_model, InferenceConfig(**cfg))(x)
        torch._dynamo.reset()
        compiled = FastELLMRec(model, InferenceConfig(**cfg, compile=True))(x)
    assert hasattr(model.lm, "peft_config")
    assert float((compiled - eager).norm() / eager.norm()) < 0.02


@pytest.mark.exactness
def test_training_ranks_through_the_fast_path_and_leaves_the_model_as_it_trains(tiny_dataset):
    """Validation during training (training.ranking): model.score's ranks, and the model trains on unchanged:
    LoRA not merged, its attention kept, the next loss and gradients bit for bit those of an untouched model."""

    def step(model):
        x = torch.randint(1, tiny_dataset.num_items + 1, (4, 6), generator=torch.Generator().manual_seed(4))
        loss = model.train()(x, x.roll(-1, 1))["loss"]
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters() if p.requires_grad]

    model = random_ellmrec(tiny_dataset.num_items, fingerprint=tiny_dataset.fingerprint)
    attention = model.base_lm().config._attn_implementation
    users = np.arange(tiny_dataset.num_users)
    with torch.no_grad():
        plain = rank_users(model.score, tiny_dataset, "test", users, 6, 7)[None]
    fast = ranking(model, "fp32", "cpu")
    assert isinstance(fast["score_fn"], FastELLMRec) and fast["by_length"]
    assert isinstance(fast["score_fn"].forward, Decoder)  # LoRA folded into copies of the weights
    ranks = rank_users(fast["score_fn"], tiny_dataset, "test", users, 6, 7, by_length=True)[None]
    assert all(np.array_equal(p, q) for p, q in zip(plain, ranks))
    assert hasattr(model.lm, "peft_config") and model.base_lm().config._attn_implementation == attention
    (l0, g0), (l1, g1) = step(random_ellmrec(tiny_dataset.num_items)), step(model)
    assert torch.equal(l0, l1) and all(torch.equal(a, b) for a, b in zip(g0, g1))
    sasrec = build_seqrec(SeqRecConfig(tiny_dataset.num_items))
    plain = ranking(sasrec, "fp32", "cpu")
    assert plain.keys() == {"score_fn", "user_fn", "items", "by_length"} and plain["by_length"]
    assert plain["user_fn"] == sasrec.user_states and torch.equal(plain["items"], sasrec.item_table())


@pytest.mark.exactness
def test_frozen_weights_in_bf16_change_nothing_under_autocast():
    """cast_frozen gives the same loss and the same gradients, bit for bit, as autocast's per-call casts."""
    x = torch.randint(0, 21, (4, 6), generator=torch.Generator().manual_seed(4))
    x[:, -1] = 3
    y = torch.randint(1, 21, (4, 6), generator=torch.Generator().manual_seed(5))
    results = []
    for cast in (False, True):
        model = random_ellmrec(20).train()
        model.cast_frozen(torch.bfloat16 if cast else None)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, y)["loss"]
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    base = model.base_lm().layers[0].mlp.up_proj.base_layer
    assert base.weight.dtype == torch.bfloat16 and model.w_in.weight.dtype == torch.float32
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1) and g0.keys() == g1.keys() and all(torch.equal(g0[k], g1[k]) for k in g0)


@pytest.mark.exactness
def test_ranks_do_not_depend_on_length_grouping(tiny_dataset):
    model = random_ellmrec(tiny_dataset.num_items, fingerprint=tiny_dataset.fingerprint)
    users = np.arange(tiny_dataset.num_users)
    with torch.no_grad():
        a = rank_users(model.score, tiny_dataset, "test", users, 6, 7)[None]
        b = rank_users(model.score, tiny_dataset, "test", users, 6, 7, by_length=True)[None]
    assert all(np.array_equal(p, q) for p, q in zip(a, b))


@pytest.fixture
def student_dir(tiny_dataset, tiny_lm_dir, tmp_path):
    """A saved E-LLMRec run directory on tiny_dataset (random trained weights)."""
    model = random_ellmrec(tiny_dataset.num_items, tiny_lm_dir, tiny_dataset.fingerprint)
    save_model(model, tmp_path / "student")
    return tmp_path / "student"


def test_recommend_scores_are_evaluates_and_leave_history_out(tiny_dataset, student_dir):
    cfg = InferenceConfig(precision="fp32")
    rec = Recommender.from_checkpoint(student_dir, tiny_dataset.path, cfg)
    histories = [tiny_dataset.history(u, "test").tolist() for u in range(tiny_dataset.num_users)]
    top = rec.recommend(histories, k=tiny_dataset.num_items)
    # The same scores as the plain path that evaluate.py --fast false and training use.
    plain, max_len = load_scorer(student_dir, tiny_dataset, InferenceConfig(precision="fp32", fast=False))
    ref = plain(torch.from_numpy(left_pad([np.array(h) for h in histories], max_len)))
    for u, (h, items) in enumerate(zip(histories, top)):
        assert not set(h) & {i for i, _ in items}  # seen items left out
        assert len(items) == tiny_dataset.num_items - len(set(h))
        scores = [s for _, s in items]
        assert scores == sorted(scores, reverse=True)
        for i, s in items:
            assert s == pytest.approx(ref[u, i].item(), abs=1e-4)
    kept = rec.recommend(histories[:1], k=tiny_dataset.num_items, keep_seen=True)[0]
    assert len(kept) == tiny_dataset.num_items
    # evaluate.py scores with the fast path: the same metrics as the plain one in fp32.
    fast = evaluate_cli.main(str(student_dir), str(tiny_dataset.path), precision="fp32")
    slow = evaluate_cli.main(str(student_dir), str(tiny_dataset.path), precision="fp32", fast="false")
    assert {k: round(v, 6) for k, v in fast.items() if k != "full"} == {
        k: round(v, 6) for k, v in slow.items() if k != "full"
    }


def test_recommend_cli_reads_ids_and_writes_jsonl(tiny_dataset, student_dir, tmp_path, capsys):
    item_ids, titles = tiny_dataset.items()
    users = tiny_dataset.users()
    lines = [{"user": "a", "history": [item_ids[1], item_ids[2]]}, {"user": users[3]}, {"history": [item_ids[5]]}]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    out = tmp_path / "recs.jsonl"
    recommend.main(str(student_dir), str(tiny_dataset.path), input=str(src), k=3, output=str(out), precision="fp32")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r.get("user") for r in rows] == ["a", users[3], None]
    assert all(len(r["items"]) == 3 for r in rows)
    assert not {item_ids[1], item_ids[2]} & {it["item"] for it in rows[0]["items"]}
    index = {orig: i for i, orig in enumerate(item_ids)}
    assert all(it["title"] == titles[index[it["item"]]] for r in rows for it in r["items"])
    # --user: that user's whole sequence; the table on stdout.
    recommend.main(str(student_dir), str(tiny_dataset.path), user=users[3], k=2, precision="fp32")
    table = capsys.readouterr().out
    assert f"# user {users[3]}" in table and rows[1]["items"][0]["item"] in table


def test_sasrec_run_directory_recommends(tiny_dataset, tmp_path):
    model = build_seqrec(SeqRecConfig(tiny_dataset.num_items, max_len=6, data_fingerprint=tiny_dataset.fingerprint))
    save_model(model, tmp_path / "sasrec")
    rec = Recommender.from_checkpoint(tmp_path / "sasrec", tiny_dataset)
    hist = tiny_dataset.history(0, "test")
    with torch.no_grad():
        ref = model.eval().score(torch.from_numpy(left_pad([hist], 6)))[0]
    ((item, score),) = rec.recommend([hist.tolist()], k=1)[0]
    ref[torch.from_numpy(hist.astype(np.int64))] = float("-inf")
    ref[0] = float("-inf")
    assert item == int(ref.argmax()) and score == pytest.approx(ref.max().item(), abs=1e-5)


def test_int8_path_scores_close_to_plain(tiny_dataset):
    model = random_ellmrec(tiny_dataset.num_items, fingerprint=tiny_dataset.fingerprint)
    x = torch.from_numpy(left_pad([tiny_dataset.history(u, "test") for u in range(8)], 6))
    with torch.no_grad():
        ref = model.score(x)
    got = FastELLMRec(model, InferenceConfig(int8=True))(x)
    assert torch.isfinite(got).all() and got.dtype == torch.float32
    # int8 rounding moves the scores of this small random network a little, not their order at large.
    corr = torch.corrcoef(torch.stack([got[:, 1:].flatten(), ref[:, 1:].flatten()]))[0, 1]
    assert corr > 0.9


BAD_REQUESTS = [  # (arguments, input file text or None, error message)
    (dict(history="nope,1"), None, r"--history: item id\(s\) \['nope'\] not in .*items.tsv"),
    (dict(history=""), None, "--history: empty history"),
    (dict(input="in.jsonl"), '{"history": ["1"]}\n{"history": [\n', "in.jsonl line 2: not JSON"),
    (dict(input="in.jsonl"), '{"history": []}\n', "in.jsonl line 1: empty history"),
    (dict(input="in.jsonl"), "[1, 2]\n", 'line 1: give "history" \\(a list of item ids\\) or "user"'),
    # JSON booleans and floats are no ids and no k (JSON true would otherwise be item, user or k number 1)
    (dict(input="in.jsonl"), '{"history": [true]}\n', 'line 1: "history" must be a list of item ids'),
    (dict(input="in.jsonl"), '{"history": [1.0]}\n', 'line 1: "history" must be a list of item ids'),
    (dict(input="in.jsonl"), '{"user": true}\n', "line 1: a user id is a string, not True"),
    (dict(input="in.jsonl"), '{"history": ["1"], "k": true}\n', r"line 1: k must be an integer in 1..\d+, not True"),
    (dict(input="in.jsonl"), '{"history": ["1"], "keep_seen": 1}\n', "line 1: keep_seen must be true or false"),
    (dict(input="in.jsonl"), '{"user": "no-such-user"}\n', "line 1: user 'no-such-user' not in"),
    (dict(input="in.jsonl"), "\n", "no histories in the file"),
    (dict(user="1", history="1"), None, "exactly one of --user, --history or --input"),
    (dict(history="1", k=0), None, "--history: k must be an integer in 1.."),
    (dict(history="1", output="FILE/out.jsonl"), None, "not a writable folder"),
]


@pytest.mark.parametrize("args,text,message", BAD_REQUESTS)
def test_recommend_bad_input_is_a_clear_error_and_writes_nothing(
    tiny_dataset, student_dir, tmp_path, monkeypatch, args, text, message
):
    monkeypatch.chdir(tmp_path)
    item_ids, _ = tiny_dataset.items()
    if text is not None:
        (tmp_path / "in.jsonl").write_text(text.replace('"1"', f'"{item_ids[1]}"'))
    args = {k: (v.replace("1", item_ids[1]) if k == "history" else v) for k, v in args.items()}
    output = args.pop("output", "out.jsonl").replace("FILE", str(student_dir / "model.safetensors"))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises((DataError, ValueError), match=message):
        recommend.main(str(student_dir), str(tiny_dataset.path), output=output, **args)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_checkpoint_of_another_dataset_is_refused(tiny_dataset, tiny_lm_dir, tmp_path):
    model = random_ellmrec(tiny_dataset.num_items, tiny_lm_dir, "0123456789abcdef")
    save_model(model, tmp_path / "other")
    with pytest.raises(CheckpointError, match="was trained on dataset 0123456789abcdef"):
        Recommender.from_checkpoint(tmp_path / "other", tiny_dataset)
    sr = build_seqrec(SeqRecConfig(tiny_dataset.num_items, data_fingerprint="0123456789abcdef"))
    save_model(sr, tmp_path / "sr")
    with pytest.raises(CheckpointError, match="was trained on dataset"):
        Recommender.from_checkpoint(tmp_path / "sr", tiny_dataset)


def test_flags_take_their_dataclass_types():
    assert split_flags({"fast": "false", "int8": "True", "batch_size": "32"}, InferenceConfig) == [
        {"fast": False, "int8": True, "batch_size": 32}
    ]
    with pytest.raises(FlagError, match="--batch_size: expected int"):
        split_flags({"batch_size": "many"}, InferenceConfig)
    with pytest.raises(FlagError, match="--fast: expected bool"):
        split_flags({"fast": "maybe"}, InferenceConfig)
    with pytest.raises(FlagError, match="unknown flag"):
        split_flags({"fsat": True}, InferenceConfig)
