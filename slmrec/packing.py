"""Padding-free LM batches for training: the instruction once, then every row's real tokens one after another,
in a single sequence the LM's projections and MLPs compute without a padding token (issue 35).

    [instruction (P)] [row 0's tokens] [row 1's tokens] ...        one sequence of P + N tokens

Attention is the one place the rows must stay apart: a registered attention function (`attention_name`) gathers
each row's queries, keys and values into a small left-padded [B, T] batch, lets every row attend to the
instruction's keys and to its own earlier tokens, and puts the outputs back in packed order; the instruction's
own tokens attend causally among themselves. Position ids are the ones the padded layout gives (the instruction
at 0..P-1, a row's tokens from P), so the rotary phases and every state are the padded layout's to rounding.
Without a layout (`packing=None`) the function is the attention it wraps, so the same LM scores padded batches.
"""

import sys
from dataclasses import dataclass, field

import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from .decoder import LLAMA_TYPES


@dataclass
class Packing:
    """Where a left-padded batch's real tokens sit in the packed sequence."""

    prefix: int  # P: the instruction's tokens, first in the sequence
    index: torch.Tensor  # [B, T]: each column's position in the packed sequence (padding: 0, masked)
    flat: torch.Tensor  # [N]: the real columns' positions in the flattened [B * T] batch, row by row
    rows: torch.Tensor  # [B, 1, T, P + T] bool: what a row's query sees: the instruction, its own earlier tokens
    causal: torch.Tensor  # [1, 1, P, P] bool: the instruction's tokens, causally
    _additive: dict = field(default_factory=dict)

    def gather(self, x):
        """x [N', d] or [1, P + N, d] packed -> [B, T, d] in the padded layout (padding columns hold the
        instruction's first state; nothing reads them)."""
        B, T = self.index.shape
        return x.reshape(-1, x.shape[-1]).index_select(0, self.index.flatten()).view(B, T, -1)

    def mask(self, which, dtype):
        """The bool mask `which` as an additive one (0 or the dtype's minimum), for the eager attention."""
        key = (which, dtype)
        if key not in self._additive:
            keep = getattr(self, which)
            self._additive[key] = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(
                ~keep, torch.finfo(dtype).min
            )
        return self._additive[key]


def layout(real: torch.Tensor, prefix: int) -> Packing:
    """The packing of a batch whose real columns are `real` [B, T] (left-padded, so a row's real columns are its
    last ones) after `prefix` instruction tokens."""
    B, T = real.shape
    flat = real.flatten().nonzero().squeeze(1)
    index = torch.zeros(B * T, dtype=torch.long, device=real.device)
    index[flat] = prefix + torch.arange(len(flat), device=real.device)
    own = torch.ones(T, T, dtype=torch.bool, device=real.device).tril() & real[:, None, :]  # [B, T, T]
    rows = torch.cat([torch.ones(B, T, prefix, dtype=torch.bool, device=real.device), own], 2)[:, None]
    causal = torch.ones(prefix, prefix, dtype=torch.bool, device=real.device).tril()[None, None]
    return Packing(prefix, index.view(B, T), flat, rows, causal)


def attention_name(inner: str) -> str:
    """The registered name of the packed attention around transformers' `inner` (eager or sdpa)."""
    return f"slmrec_packed_{inner}"


def grouped_eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' LLaMA eager attention (scaled scores plus the additive mask, an fp32 softmax cast back to the
    query's dtype, dropout, the product with the values) without repeating the keys and values for every query
    head they serve: the query heads of one key/value head are stacked as rows of one product."""
    B, H, T, D = query.shape
    kv = key.shape[1]
    w = (query.reshape(B, kv, H // kv * T, D) @ key.transpose(2, 3)) * scaling  # [B, kv, G * T, keys]
    if attention_mask is not None:  # [B or 1, 1, T, keys], the same for every head
        w = (w.unflatten(2, (H // kv, T)) + attention_mask[:, :, None]).flatten(2, 3)
    w = torch.softmax(w, -1, dtype=torch.float32).to(query.dtype)
    w = torch.nn.functional.dropout(w, p=dropout, training=module.training)
    return (w @ value).view(B, H, T, D).transpose(1, 2).contiguous(), w


def _inner_function(module, inner):
    if inner == "eager":  # each model file's own eager function (transformers keeps it out of the registry)
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[inner]


def _packed(inner):
    def attend(module, query, key, value, attention_mask, packing: Packing = None, **kwargs):
        fn = _inner_function(module, inner)
        if packing is None:
            return fn(module, query, key, value, attention_mask, **kwargs)
        if inner == "eager" and getattr(getattr(module, "config", None), "model_type", None) in LLAMA_TYPES:
            fn = grouped_eager
        P, (B, T) = packing.prefix, packing.index.shape
        idx = packing.index.flatten()
        per_row = lambda t: t[0].index_select(1, idx).unflatten(1, (B, T)).transpose(0, 1)  # [B, h, T, D]
        with_prefix = lambda t: torch.cat([t[:, :, :P].expand(B, -1, -1, -1), per_row(t)], 2)
        eager = inner == "eager"
        rows_mask = packing.mask("rows", query.dtype) if eager else packing.rows
        out, _ = fn(module, per_row(query), with_prefix(key), with_prefix(value), rows_mask, **kwargs)
        causal = packing.mask("causal", query.dtype) if eager else None  # sdpa: is_causal without a mask
        head, _ = fn(module, query[:, :, :P], key[:, :, :P], value[:, :, :P], causal, **kwargs)
        out = out.reshape(B * T, *out.shape[2:]).index_select(0, packing.flat)  # [N, H, D], packed order
        return torch.cat([head[0], out])[None], None

    return attend


for _inner in ("eager", "sdpa"):
    AttentionInterface.register(attention_name(_inner), _packed(_inner))
    ALL_MASK_ATTENTION_FUNCTIONS.register(attention_name(_inner), ALL_MASK_ATTENTION_FUNCTIONS[_inner])
