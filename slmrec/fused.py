"""The LM's forward over a packed training batch (slmrec/packing.py), over the model's own parameters, written as
one function of tensors: with fewer operators than transformers' modules, and one that torch.compile takes whole
(`--compile true`; through transformers' modules and peft's layers the graph splits, and compiling them gained
nothing). Per decoder layer:

  - q, k and v in one product, gate and up in one, over their frozen weights concatenated once (a copy, made
    again when a weight changes), on the input cast once to autocast's dtype (autocast would cast it again for
    every product that reads it); q and k cast so after the rotary phases, before attention gathers them;
  - each LoRA adapter's update added to its projection's slice inside the product that computes it (addmm), its
    dropout a product with a 0/1 mask and its rescaling folded into the adapter's scaling, so no pass over the
    projection's output is spent on either; peft's order otherwise (base + B(A(dropout(x))) * scaling);
  - the masks drawn before the forward, one projection after another in the order transformers' forward draws
    them, so a seed drops the same elements either way (and torch.compile's graph is not split by the draws);
  - the norms, the rotary phases, the attention (the registered packed attention the LM is set to) and the MLP
    computed as transformers' LLaMA modules compute them.

So the loss and every gradient are transformers' to rounding (tests/test_train_step.py checks them against the
instruction-in-every-row reference and against transformers' forward of the same packed batch, and the compiled
step against this one). LLaMA-architecture decoders with plain or LoRA projections only (`supports`); anything
else trains through transformers' forward. What each gains: benchmarks/README.md, "Training speed".
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from . import decoder
from .backbone import decoder_layers
from .packing import attention_name

QKV = ("q_proj", "k_proj", "v_proj")
GATE_UP = ("gate_proj", "up_proj")


def _projections(layer):
    a, m = layer.self_attn, layer.mlp
    return {**{n: getattr(a, n) for n in (*QKV, "o_proj")}, **{n: getattr(m, n) for n in (*GATE_UP, "down_proj")}}


def _base(projection):
    return projection.get_base_layer() if hasattr(projection, "get_base_layer") else projection


def _adapters(projection):
    """[(name, A, B, dropout, scaling)] of a projection's active LoRA adapters (none for a plain nn.Linear)."""
    if not hasattr(projection, "lora_A"):
        return []
    names = [n for n in projection.active_adapters if n in projection.lora_A]
    return [
        (n, projection.lora_A[n], projection.lora_B[n], projection.lora_dropout[n], projection.scaling[n])
        for n in names
    ]


def random_bits(n, device=None):
    """n random 16-bit values, uniform over 0..2^16-1. On a CPU a numpy uint16 array from numpy's PCG64DXSM, four
    values a 64-bit draw, seeded by one draw of torch's generator (so torch.manual_seed and a resumed run's
    restored RNG state decide them): torch's CPU generator yields 32 bits a draw at a fraction of the rate
    (benchmarks/README.md, "Training speed"). Elsewhere an int32 tensor from torch's generator on that device."""
    if torch.device(device or "cpu").type != "cpu":
        return torch.randint(0, 2**16, (n,), dtype=torch.int32, device=device)
    seed = int(torch.empty((), dtype=torch.int64).random_())
    return np.random.PCG64DXSM(seed).random_raw((n + 3) // 4).view(np.uint16)[:n]


class MaskDropout(nn.Module):
    """LoRA's dropout with its mask drawn from 16 random bits an element (random_bits), where nn.Dropout draws a
    float per element. An element is dropped with probability round(p * 2^16) / 2^16 (p = 0.05: 0.0500031) and
    the kept ones scaled to keep the mean, as nn.Dropout does; the product with the scale rounds as peft's fp32
    product cast to autocast's dtype does."""

    def __init__(self, p):
        super().__init__()
        self.p, self.threshold = p, min(round(p * 2**16), 2**16 - 1)
        self.scale = 2**16 / (2**16 - self.threshold)

    def active(self):
        return self.training and self.threshold > 0

    def keep(self, shape, dtype, device=None):
        """A keep mask of this shape: 1 or 0 in dtype, to multiply by (on a CPU the comparison runs in numpy and
        the cast from uint8, where torch's bool kernels take several times as long)."""
        bits = random_bits(math.prod(shape), device)
        if isinstance(bits, np.ndarray):
            return torch.from_numpy((bits >= self.threshold).view(np.uint8)).to(dtype).view(shape)
        return (bits >= self.threshold).to(dtype).view(shape)

    def forward(self, x):
        if not self.active():
            return x
        return x * self.keep(x.shape, x.dtype, x.device) * self.scale

    def extra_repr(self):
        return f"p={self.p}"


def _plain(projection) -> bool:
    """A frozen nn.Linear without a bias, or peft's LoRA Linear around one with unmerged, enabled plain
    adapters (no DoRA, no adapter bias) that take the input as it comes."""
    base = _base(projection)
    if type(base) is not nn.Linear or base.bias is not None or base.weight.requires_grad:
        return False
    if base is projection:
        return True
    if projection.merged or projection.disable_adapters or getattr(projection, "cast_input_dtype_enabled", True):
        return False  # ELLMRec turns peft's input cast off
    names = [n for n in projection.active_adapters if n in projection.lora_A]
    return not any(projection.use_dora.get(n, False) for n in names) and all(
        type(projection.lora_A[n]) is nn.Linear and projection.lora_B[n].bias is None for n in names
    )


def supports(lm) -> bool:
    """lm: the LlamaModel, with peft's LoRA layers in it (not merged), set to the packed attention."""
    return (
        decoder.supports(lm)
        and lm.config._attn_implementation in (attention_name("eager"), attention_name("sdpa"))
        and all(_plain(p) for layer in decoder_layers(lm) for p in _projections(layer).values())
    )


def _compute_dtype(x):
    """The dtype autocast would cast x to for a product; x's own without autocast."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _autocast(x):
    """x in its compute dtype: cast once where autocast would cast it again for every product that reads it."""
    return x.to(_compute_dtype(x))


def _project(x, weight, projections, keeps):
    """x [1, S, d] through the projections whose frozen weights are concatenated in `weight`, one output each,
    with its LoRA updates added; keeps: {(projection, adapter): its MaskDropout's keep mask [S, d], in the
    dtype x is cast to}."""
    x = _autocast(x)[0]
    outs = F.linear(x, weight).split([_base(p).out_features for p in projections], -1)
    done = []
    for out, projection in zip(outs, projections):
        for name, A, B, dropout, scaling in _adapters(projection):
            keep = keeps.get((id(projection), name))
            if keep is None:
                out = torch.addmm(out, A(dropout(x)), B.weight.t(), alpha=scaling)
            else:
                out = torch.addmm(out, A(x * keep), B.weight.t(), alpha=scaling * dropout.scale)
        done.append(out[None])
    return done


class FusedForward:
    """forward(embeds [1, S, d], positions [1, S], packing, capture) -> the final-norm states [1, S, d]; capture:
    a list to which each decoder layer's output is appended, or None. Holds the concatenated frozen weights
    (not a module: they are not the model's state and are never saved)."""

    def __init__(self, lm, compile=False):
        self.lm, self.compiled = lm, compile
        self._weights, self._key = None, None
        self._forward = torch.compile(self.forward, dynamic=True) if compile else self.forward

    def __call__(self, embeds, positions, packing, capture=None):
        # sizes that happen to be equal in one batch (the packed length and a [B, T] size) are not assumed equal
        # by the compiler, which would compile again at the next batch where they are not
        with torch.fx.experimental._config.patch(use_duck_shape=False):
            return self._forward(embeds, positions, packing, capture, self.weights(), self.keeps(embeds))

    def keeps(self, embeds):
        """The step's keep mask for every active MaskDropout, in the order transformers' forward draws them."""
        S, device, dtype = embeds.shape[1], embeds.device, _compute_dtype(embeds)
        return {
            (id(p), name): dropout.keep((S, _base(p).in_features), dtype, device)
            for layer in decoder_layers(self.lm)
            for p in _projections(layer).values()
            for name, _, _, dropout, _ in _adapters(p)
            if isinstance(dropout, MaskDropout) and dropout.active()
        }

    def weights(self):
        layers = [_projections(layer) for layer in decoder_layers(self.lm)]
        frozen = [_base(p).weight for ps in layers for n, p in ps.items() if n in QKV + GATE_UP]
        key = [(w.data_ptr(), w.dtype, w._version) for w in frozen]
        if key != self._key:
            cat = lambda ps, names: torch.cat([_base(ps[n]).weight for n in names]).detach()
            self._weights = [(cat(ps, QKV), cat(ps, GATE_UP)) for ps in layers]
            self._key = key
        return self._weights

    def forward(self, embeds, positions, packing, capture, weights, keeps):
        lm = self.lm
        attend = ALL_ATTENTION_FUNCTIONS[lm.config._attn_implementation]
        cos, sin = (t[:, None] for t in lm.rotary_emb(embeds, positions))  # [1, 1, S, D], fp32 as transformers'
        x, S = embeds, embeds.shape[1]
        for layer, (qkv, gate_up) in zip(decoder_layers(lm), weights):
            a, m = layer.self_attn, layer.mlp
            h = decoder.rms_norm(x, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
            q, k, v = (
                t.view(1, S, -1, a.head_dim).transpose(1, 2)
                for t in _project(h, qkv, [a.q_proj, a.k_proj, a.v_proj], keeps)
            )
            # the fp32 phases make fp32 q and k, which attention's products would cast (after the packing's gathers)
            q, k = _autocast(decoder.rotate(q, cos, sin)), _autocast(decoder.rotate(k, cos, sin))
            dropout = a.attention_dropout if a.training else 0.0
            out, _ = attend(a, q, k, v, packing.rows, packing=packing, dropout=dropout, scaling=a.scaling)
            out = out.reshape(1, S, -1)
            x = x + _project(out, _base(a.o_proj).weight, [a.o_proj], keeps)[0]
            h = decoder.rms_norm(
                x, layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon
            )
            gate, up = _project(h, gate_up, [m.gate_proj, m.up_proj], keeps)
            x = x + _project(F.silu(gate) * up, _base(m.down_proj).weight, [m.down_proj], keeps)[0]
            if capture is not None:
                capture.append(x)
        return decoder.rms_norm(x, lm.norm.weight, lm.norm.variance_epsilon)
