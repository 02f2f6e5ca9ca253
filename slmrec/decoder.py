"""An inference-only forward pass of a LLaMA-architecture decoder, over the weights of a loaded transformers
LlamaModel, for the fast scoring path (slmrec/inference.py). It computes what LlamaModel.forward computes for
the one state a recommendation reads, with less work around the matrix products:

  - q, k and v in one product, gate and up in one (their weights concatenated): fewer, larger products;
  - grouped-query attention without copying keys and values per query head: the query heads that share a
    key/value head are stacked as rows of one product;
  - the rotary tables for every position computed once, at construction;
  - the instruction's keys and values (the same for every user) computed once; rows are laid out as
    [items] [response] [padding], so causal attention alone keeps real tokens from seeing padding;
  - in the last layer only the row that is read goes on after its keys and values: attention's output, the
    MLP and the final norm of every other position are never needed.
RMSNorm, rotary and softmax round as transformers' do (fp32 inside, the compute dtype between), so the scores
agree with ELLMRec.score within the compute dtype's rounding (tests/test_inference.py). How it compares with
transformers' forward, compiled or not: benchmarks/inference_speed.py, its tables in benchmarks/README.md.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import decoder_layers


LLAMA_TYPES = ("llama", "mistral")  # model_type values whose layers compute as transformers' LLaMA modules


def supports(lm) -> bool:
    """LLaMA-architecture decoders (LLaMA, SmolLM2, Mistral without sliding windows): no biases, SiLU MLP, rotary
    tables that do not depend on the sequence's length (not the dynamic or longrope kinds)."""
    c = lm.config
    rope = getattr(getattr(lm, "rotary_emb", None), "rope_type", None)
    return (
        c.model_type in LLAMA_TYPES
        and not getattr(c, "attention_bias", False)
        and not getattr(c, "mlp_bias", False)
        and c.hidden_act == "silu"
        and getattr(c, "sliding_window", None) is None
        and rope in ("default", "linear", "llama3", "yarn")
    )


def weight(linear):
    """A projection's weight with its active LoRA updates folded in (peft's get_delta_weight), as a new tensor in
    the weight's dtype; a plain nn.Linear's own weight."""
    if not hasattr(linear, "get_delta_weight"):
        return linear.weight
    w = linear.get_base_layer().weight
    delta = sum(linear.get_delta_weight(name) for name in linear.active_adapters if name in linear.lora_A)
    return (w.float() + delta.float()).to(w.dtype)


def _buffers(**tensors):
    module = nn.Module()
    for name, t in tensors.items():
        module.register_buffer(name, t.detach())
    return module


def rms_norm(x, weight, eps):
    """transformers' LlamaRMSNorm: the statistics in fp32, the product with the weight in the input's dtype. An
    fp32 input with an fp32 weight (training's residual stream under autocast) goes through torch's fused
    kernel, which computes the same values in fewer passes; in a lower precision it would round differently."""
    if x.dtype == weight.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotate(x, cos, sin):
    """Rotary position embedding of x [..., T, head_dim] with tables [T, head_dim] (rotate_half's convention,
    x * cos + rotate_half(x) * sin): rotate_half's sign moved onto the table, which is [T, head_dim] where x is
    every head's, and the product with it added in one pass (addcmul)."""
    half = x.shape[-1] // 2
    return torch.addcmul(x * cos, x.roll(half, -1), torch.cat([-sin[..., :half], sin[..., half:]], -1))


class Decoder(nn.Module):
    """decoder(x [B, T, d], read [B]) -> [B, d]: the final-norm state at column read[b] of each row of
    inputs_embeds x (in the compute dtype), positions P.. after the cached prefix. Takes the weights of
    `lm` (a LlamaModel) in their dtype, LoRA folded into a copy where it is not merged (the model is left as it
    is: validation during training builds one on the current weights); the fused q/k/v and gate/up weights are
    copies (about 60% of the layers' weights again)."""

    def __init__(self, lm, prefix_embeds, max_len):
        super().__init__()
        c = lm.config
        self.heads, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.eps = c.rms_norm_eps
        self.layers = nn.ModuleList()
        for layer in decoder_layers(lm):
            a, m = layer.self_attn, layer.mlp
            self.layers.append(
                _buffers(
                    qkv=torch.cat([weight(a.q_proj), weight(a.k_proj), weight(a.v_proj)]),
                    o=weight(a.o_proj),
                    gate_up=torch.cat([weight(m.gate_proj), weight(m.up_proj)]),
                    down=weight(m.down_proj),
                    norm1=layer.input_layernorm.weight,
                    norm2=layer.post_attention_layernorm.weight,
                )
            )
        self.register_buffer("norm", lm.norm.weight.detach().clone())
        dtype = self.norm.dtype
        self.P = prefix_embeds.shape[0]
        rotary = lm.rotary_emb  # inv_freq and attention_scaling carry the model's rope scaling
        positions = torch.arange(self.P + max_len, device=self.norm.device, dtype=torch.float32)
        angles = positions[:, None] * rotary.inv_freq.float()[None]
        angles = torch.cat([angles, angles], -1)
        self.register_buffer("cos", (angles.cos() * rotary.attention_scaling).to(dtype))
        self.register_buffer("sin", (angles.sin() * rotary.attention_scaling).to(dtype))
        for i, (k, v) in enumerate(self._forward(prefix_embeds[None], None, start=0)):
            self.layers[i].register_buffer("prefix_k", k)
            self.layers[i].register_buffer("prefix_v", v)

    def forward(self, x, read):
        return self._forward(x, read, start=self.P)

    def _forward(self, x, read, start):
        """The states read at `read`, or with read None (the prefix, from position 0) every layer's keys and
        values."""
        B, T, _ = x.shape
        H, KV, D = self.heads, self.kv_heads, self.head_dim
        G = H // KV
        cos, sin = self.cos[start : start + T], self.sin[start : start + T]
        keys = torch.arange(start + T, device=x.device)
        causal = keys[None] <= start + torch.arange(T, device=x.device)[:, None]  # [T, keys]
        prefix_kv = []
        for i, w in enumerate(self.layers):
            last = i == len(self.layers) - 1
            h = rms_norm(x, w.norm1, self.eps)
            q, k, v = F.linear(h, w.qkv).split([H * D, KV * D, KV * D], -1)
            q = rotate(q.view(B, T, H, D).transpose(1, 2), cos, sin)
            k = rotate(k.view(B, T, KV, D).transpose(1, 2), cos, sin)
            v = v.view(B, T, KV, D).transpose(1, 2)
            mask = causal[None, None, None]  # [1, 1, 1, T, keys]
            if read is None:
                prefix_kv.append((k, v))
                if last:
                    return prefix_kv
            else:
                k = torch.cat([w.prefix_k.expand(B, -1, -1, -1), k], 2)
                v = torch.cat([w.prefix_v.expand(B, -1, -1, -1), v], 2)
                if last:  # only the read row goes on: its query, its residual, the keys up to its position
                    rows = torch.arange(B, device=x.device)
                    q, x = q[rows, :, read][:, :, None], x[rows, read][:, None]
                    mask = causal[read][:, None, None, None]  # [B, 1, 1, 1, keys]
            n = q.shape[2]
            # The G query heads of one key/value head as G x n rows against its keys (no repeated k, v).
            # Plain products, not torch's SDPA kernel: it is slower here on a bf16 CPU
            # (benchmarks/README.md, "Inference speed")
            scores = (q.reshape(B, KV, G * n, D) @ k.transpose(-1, -2)) * self.scale
            scores = scores.view(B, KV, G, n, -1).masked_fill(~mask, float("-inf"))
            p = torch.softmax(scores.view(B, KV, G * n, -1), -1, dtype=torch.float32).to(x.dtype)
            attn = (p @ v).view(B, H, n, D).transpose(1, 2).reshape(B, n, H * D)
            x = x + F.linear(attn, w.o)
            h = rms_norm(x, w.norm2, self.eps)
            gate, up = F.linear(h, w.gate_up).chunk(2, -1)
            x = x + F.linear(F.silu(gate) * up, w.down)
        return rms_norm(x[:, 0], self.norm, self.eps)
