"""The GGUF path, through a tiny LLaMA GGUF written here with the `gguf` package."""

import gguf
import numpy as np
import pytest
import torch
from tokenizers import pre_tokenizers

from slmrec.backbone import decoder_layers, load_backbone
from slmrec.model import ELLMRec, ELLMRecConfig

HIDDEN, INTER, HEADS, KV_HEADS, LAYERS = 32, 64, 4, 2, 3


def write_tiny_gguf(path, seed=0):
    rng = np.random.default_rng(seed)
    # Byte-level BPE with one merge (the converter needs at least one).
    tokens = sorted(pre_tokenizers.ByteLevel.alphabet()) + ["\u0120t", "<s>", "</s>"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 2) + [3, 3])
    w.add_token_merges(["\u0120 t"])
    w.add_bos_token_id(len(tokens) - 2)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_pad_token_id(len(tokens) - 1)
    tensors = {"token_embd.weight": (len(tokens), HIDDEN), "output_norm.weight": (HIDDEN,)}
    kv = HIDDEN // HEADS * KV_HEADS
    for b in range(LAYERS):
        tensors.update(
            {
                f"blk.{b}.attn_norm.weight": (HIDDEN,),
                f"blk.{b}.ffn_norm.weight": (HIDDEN,),
                f"blk.{b}.attn_q.weight": (HIDDEN, HIDDEN),
                f"blk.{b}.attn_k.weight": (kv, HIDDEN),
                f"blk.{b}.attn_v.weight": (kv, HIDDEN),
                f"blk.{b}.attn_output.weight": (HIDDEN, HIDDEN),
                f"blk.{b}.ffn_gate.weight": (INTER, HIDDEN),
                f"blk.{b}.ffn_up.weight": (INTER, HIDDEN),
                f"blk.{b}.ffn_down.weight": (HIDDEN, INTER),
            }
        )
    arrays = {}
    for name, shape in tensors.items():
        a = (np.ones(shape) if name.endswith("norm.weight") else rng.normal(0, 0.05, shape)).astype(np.float32)
        arrays[name] = a
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return arrays


def test_gguf_backbone_loads_truncated_with_its_tokenizer(tmp_path):
    arrays = write_tiny_gguf(tmp_path / "tiny.gguf")
    lm, tok = load_backbone(str(tmp_path / "tiny.gguf"), 2)
    assert len(decoder_layers(lm)) == 2 and lm.config.hidden_size == HIDDEN
    assert np.allclose(lm.embed_tokens.weight.detach().numpy(), arrays["token_embd.weight"])
    assert np.allclose(lm.layers[1].mlp.up_proj.weight.detach().numpy(), arrays["blk.1.ffn_up.weight"])
    assert tok.decode(tok("Next item:", add_special_tokens=False)["input_ids"]) == "Next item:"

    model = ELLMRec(
        ELLMRecConfig(base_model=str(tmp_path / "tiny.gguf"), num_layers=2, max_len=5), torch.randn(11, 8)
    ).eval()
    scores = model.score(torch.tensor([[0, 0, 1, 2, 3]]))
    assert scores.shape == (1, 11) and torch.isfinite(scores).all()


@pytest.mark.exactness
def test_gguf_is_converted_once_and_read_back_with_the_same_weights_and_tokens(tmp_path, monkeypatch):
    from transformers import AutoModel, AutoTokenizer

    from slmrec import backbone

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    direct = AutoModel.from_pretrained(str(tmp_path), gguf_file=path.name, local_files_only=True, dtype=torch.float32)
    direct_tok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name, local_files_only=True)
    lm, tok = load_backbone(str(path), 2)
    converted = list((backbone.cache_dir() / "models").glob("tiny-*"))
    assert len(converted) == 1 and (converted[0] / backbone.CONVERTED).is_file()
    expected = direct.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in lm.state_dict().items())  # the first 2 layers, exactly
    text = "Below is a user's history.\n### Next item:"
    assert tok(text)["input_ids"] == direct_tok(text)["input_ids"]
    # the second load reads the directory: the GGUF is not parsed again
    parsed = []
    real = AutoModel.from_pretrained
    monkeypatch.setattr(
        AutoModel, "from_pretrained", lambda *a, **k: parsed.append(k.get("gguf_file")) or real(*a, **k)
    )
    lm2, _ = load_backbone(str(path), 2)
    assert parsed == [None] and all(torch.equal(v, lm.state_dict()[k]) for k, v in lm2.state_dict().items())
    # another file (same name, other content) gets its own conversion
    write_tiny_gguf(path, seed=1)
    load_backbone(str(path), 2)
    assert len(list((backbone.cache_dir() / "models").glob("tiny-*"))) == 2
