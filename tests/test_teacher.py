import json
import os
import pickle
import socket
import subprocess
import sys

import pytest
import torch

import evaluate as evaluate_cli
import finetune
from conftest import ROOT
from helpers import TINY_TRAIN, tiny_model
from slmrec.backbone import BackboneError, decoder_layers, load_backbone
from slmrec.data import PreparedData
from slmrec.prepare import PrepareConfig, prepare
from slmrec.embeddings import EmbeddingFileError
from slmrec.metrics import METRICS, evaluate
from slmrec import report
from slmrec.examples import NextItemDataset, WindowDataset
from slmrec.model import load_ellmrec
from slmrec.checkpoints import CheckpointError


def test_truncation_keeps_the_first_m_layers(tiny_lm_dir):
    full, _ = load_backbone(str(tiny_lm_dir), 8)
    cut, _ = load_backbone(str(tiny_lm_dir), 3)
    assert len(decoder_layers(cut)) == cut.config.num_hidden_layers == 3
    for a, b in zip(decoder_layers(full)[:3], decoder_layers(cut)):
        for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
            assert torch.equal(p, q), n
    with pytest.raises(BackboneError, match="has 8 layers; cannot keep 9"):
        load_backbone(str(tiny_lm_dir), 9)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="not a local Hugging Face model directory"):
        load_backbone(str(tmp_path / "llama-7b"), 8)
    with pytest.raises(BackboneError, match="no such GGUF file"):
        load_backbone(str(tmp_path / "x.gguf"), 8)
    with pytest.raises(BackboneError, match="unknown random preset"):
        load_backbone("random:huge", 8)


def test_only_lora_and_heads_train(tiny_lm_dir):
    model = tiny_model(tiny_lm_dir)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.split(".")[0] in ("w_in", "w_out") for n in trainable)
    assert {"w_in.weight", "w_in.bias", "w_out.weight"} <= set(trainable)
    assert any("mlp.down_proj.lora_A" in n for n in trainable)
    assert not any("self_attn" in n or "embed_tokens" in n for n in trainable)
    assert not model.item_embedding.requires_grad
    # A zero head gives uniform scores: the first loss is ln|I|.
    loss = model(torch.tensor([[0, 0, 0, 1, 2, 3]]), torch.tensor([4]))["loss"]
    assert loss.item() == pytest.approx(torch.log(torch.tensor(20.0)).item(), abs=1e-5)


def test_padding_keeps_scores(tiny_lm_dir):
    model = tiny_model(tiny_lm_dir).eval()
    torch.nn.init.normal_(model.w_out.weight)
    short = torch.tensor([[0, 0, 0, 5, 9, 2]])
    others = torch.tensor([[1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7]])
    with torch.no_grad():
        alone = model.score(short)
        batched = model.score(torch.cat([others[:1], short, others[1:]]))
    assert torch.allclose(alone, batched[1:2], atol=1e-5)


def test_layer_states_and_intermediate_scoring(tiny_lm_dir):
    model = tiny_model(tiny_lm_dir).eval()
    torch.nn.init.normal_(model.w_out.weight)
    hist = torch.tensor([[0, 0, 1, 2, 3, 4]])
    with torch.no_grad():
        h, states = model.encode(hist, layer_states=True)
        assert len(states) == 4 and states[0].shape == h.shape
        norm = model.lm.get_base_model().norm
        assert torch.allclose(norm(states[-1]), h, atol=1e-5)  # the last layer's state, normed, is h
        assert torch.allclose(model.score_layers(hist, [4])[4], model.score(hist), atol=1e-5)
        assert not torch.allclose(model.score_layers(hist, [2])[2], model.score(hist))


def test_training_examples_are_every_next_item_target(tiny_dataset):
    ds = NextItemDataset(tiny_dataset, max_len=4)
    assert len(ds) == sum(len(tiny_dataset.train_part(u)) - 1 for u in range(tiny_dataset.num_users))
    ex = ds[0]
    seq = tiny_dataset.train_part(0)
    assert ex["labels"].item() == seq[1] and ex["input_ids"].tolist() == [0, 0, 0, seq[0]]
    capped = NextItemDataset(tiny_dataset, max_len=4, max_per_user=2)
    assert len(capped) == 2 * tiny_dataset.num_users
    assert capped[1]["labels"].item() == seq[-1]  # the most recent targets are kept


def test_finetune_end_to_end_and_reload(tiny_dataset, tiny_embedding, tiny_lm_dir, tmp_path):
    out = tmp_path / "teacher"
    finetune.main(str(tiny_dataset.path), str(tiny_embedding), str(out), base_model=str(tiny_lm_dir), **TINY_TRAIN)
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert all(0 <= metrics[k] <= 1 for k in METRICS) and all(0 <= metrics["full"][k] <= 1 for k in METRICS)
    # The checkpoint is small (no LM weights) and rebuilds the model alone: identical test metrics.
    assert (out / "model.safetensors").stat().st_size < 200_000
    model = load_ellmrec(out, tiny_dataset)
    again = evaluate(model.score, tiny_dataset, "test", model.cfg.max_len, 16)
    assert {k: again[k] for k in METRICS} == {k: metrics[k] for k in METRICS}
    layers = evaluate_cli.main(str(out), str(tiny_dataset.path), layers="2,4", precision="fp32")
    assert {k: layers["layer_4"][k] for k in METRICS} == {k: metrics[k] for k in METRICS}
    # The main job's summary names the model, budget and resolved precision beside the same numbers.
    lines = report.table(tmp_path).splitlines()
    row = next(line for line in lines if line.startswith("| teacher | "))  # the stored candidates' table first
    assert lines[0].startswith(f"Data: {tiny_dataset.path}: 30 users") and "leave-one-out" in lines[0]
    assert lines[-1] == "| teacher | " + " | ".join(f"{metrics['full'][k]:.4f}" for k in METRICS) + " |"
    assert row.startswith(f"| teacher | {tiny_lm_dir}, 4 layers, last_item readout | every_position | 4 steps of")
    assert f"{metrics['MRR']:.4f} |" in row
    assert 0 < metrics["seconds_to_best"] <= metrics["train_seconds"]
    assert 100 < metrics["peak_rss_mb"] < 100_000  # MB, this process's own peak
    assert "| auto |" not in row and "not recorded" not in report.table(tmp_path)

    # Resume: continue from checkpoint-4 to step 6.
    finetune.main(
        str(tiny_dataset.path),
        str(tiny_embedding),
        str(out),
        base_model=str(tiny_lm_dir),
        resume=True,
        **{**TINY_TRAIN, "max_steps": 6},
    )
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and any(e.get("step") == 2 for e in state["log_history"])


def test_checkpoint_from_other_data_is_refused(tiny_dataset, tiny_embedding, tiny_lm_dir, tmp_path):
    out = tmp_path / "teacher"
    finetune.main(
        str(tiny_dataset.path),
        str(tiny_embedding),
        str(out),
        base_model=str(tiny_lm_dir),
        **{**TINY_TRAIN, "max_steps": 2},
    )
    from conftest import synthetic_rows, write_amazon_csv

    other = write_amazon_csv(tmp_path / "other.csv", synthetic_rows(seed=5))
    prepare(PrepareConfig(str(other), num_negatives=15), tmp_path / "other")
    with pytest.raises(CheckpointError, match="was trained on dataset"):
        load_ellmrec(out, PreparedData(tmp_path / "other"))
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_ellmrec(tmp_path / "nowhere")
    with open(tmp_path / "small.pkl", "wb") as fh:
        pickle.dump({"item_embedding": torch.zeros(3, 8)}, fh)
    with pytest.raises(EmbeddingFileError, match="another dataset"):
        finetune.main(
            str(tiny_dataset.path),
            str(tmp_path / "small.pkl"),
            str(tmp_path / "t"),
            base_model=str(tiny_lm_dir),
            **TINY_TRAIN,
        )


def test_ddp_on_cpu_with_two_gloo_processes(tiny_dataset, tiny_embedding, tiny_lm_dir, tmp_path):
    out = tmp_path / "ddp"
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={port}",
        str(ROOT / "finetune.py"),
        "--data",
        str(tiny_dataset.path),
        "--item_embedding",
        str(tiny_embedding),
        "--output_dir",
        str(out),
        "--base_model",
        str(tiny_lm_dir),
    ]
    for k, v in TINY_TRAIN.items():
        cmd += [f"--{k}", str(v)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:  # about 12 s here; a hang (seen once in a full run, not reproduced since) fails with what it printed
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or ""
        pytest.fail(f"two-process training did not finish in 300 s; its stderr ends:\n{err[-3000:]}")
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert all(0 <= metrics[k] <= 1 for k in METRICS)
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert "2 process(es)" in res.stderr
    # Each process saw its share of an epoch's batches: 2 steps of a global batch of 16 over the windows.
    steps_per_epoch = -(-len(WindowDataset(tiny_dataset, TINY_TRAIN["max_len"])) // 16)
    assert state["log_history"][0]["epoch"] == pytest.approx(2 / steps_per_epoch, abs=1e-3)
