"""The pieces of a packed training step (slmrec/fused.py) beside what they replaced, at ml-100k's teacher shapes
(SmolLM2: 9 query and 3 key/value heads of 64, hidden 576, MLP 1536; 826 packed tokens, batch 16 of 50), each
forward + backward where it has one, in one process:

    LoRA masks   one step's bits (8 layers, masks on gate, up and down): torch's random_ on int32 (two 15-bit
                 values a draw, the earlier MaskDropout) against fused.random_bits (numpy's PCG64DXSM, four
                 16-bit values a draw); the mask and its product, torch's int16 comparison and where against
                 numpy's comparison, a cast from uint8 and a product with a 0/1 mask
    RMSNorm      transformers' LlamaRMSNorm on the fp32 residual stream against decoder.rms_norm
    rotary       transformers' apply_rotary_pos_emb (fp32 phases, bf16 q and k) against decoder.rotate
    attention    transformers' eager attention on one layer's per-row batch against packing.grouped_eager

    python benchmarks/step_kernels.py
"""

import numpy as np
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb, eager_attention_forward

from slmrec.cli import run
from slmrec.decoder import rms_norm, rotate
from slmrec.fused import MaskDropout, random_bits
from slmrec.machine import hardware
from slmrec.packing import grouped_eager
from slmrec.timing import seconds


def ms(fn):
    """Median milliseconds of fn over 30 calls after 3 untimed ones."""
    return seconds(fn, 30, warmup=3) * 1e3


def backward(fn, *inputs):
    """fn(*inputs) forward and backward, with fresh leaves each call."""
    leaves = [x.detach().requires_grad_(x.is_floating_point()) for x in inputs]
    out = fn(*leaves)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(torch.ones_like(out))


def torch_bits(n):
    """The earlier MaskDropout's bits: two 15-bit values from each 32-bit draw of torch's generator."""
    return torch.empty((n + 1) // 2, dtype=torch.int32).random_().view(torch.int16)[:n]


def main(tokens: int = 826, rows: int = 16, window: int = 50, prompt: int = 26, layers: int = 8):
    """tokens: a packed batch's tokens (the instruction's and the rows'); rows x window: its per-row attention
    batch after `prompt` instruction tokens; layers: the decoder layers a step's masks cover."""
    torch.manual_seed(0)
    d, ffn, heads, kv, hd = 576, 1536, 9, 3, 64
    bf = torch.bfloat16
    step_bits = tokens * (2 * d + ffn) * layers
    drop, old_threshold = MaskDropout(0.05), round(0.05 * 2**15)
    x = torch.randn(tokens, ffn).to(bf)

    def old_mask():  # the earlier MaskDropout: an fp32 mask holding the scale, a product in fp32
        keep = (torch_bits(x.numel()).view(x.shape) & 0x7FFF) >= old_threshold
        return x * torch.where(keep, 2**15 / (2**15 - old_threshold), 0.0)

    h = torch.randn(1, tokens, d) * 3
    norm = LlamaRMSNorm(d).requires_grad_(False)
    q, k = torch.randn(1, heads, tokens, hd).to(bf), torch.randn(1, kv, tokens, hd).to(bf)
    angles = torch.randn(1, tokens, hd)
    cos, sin = angles.cos(), angles.sin()

    def old_rotary(a, b):
        return sum(t.sum() for t in apply_rotary_pos_emb(a, b, cos, sin))

    def new_rotary(a, b):
        return rotate(a, cos[:, None], sin[:, None]).sum() + rotate(b, cos[:, None], sin[:, None]).sum()

    module = type("Attention", (), {"num_key_value_groups": heads // kv, "training": True})()
    aq = torch.randn(rows, window, heads, hd).to(bf).transpose(1, 2)
    ak, av = (torch.randn(rows, kv, prompt + window, hd).to(bf) for _ in range(2))
    keep = torch.ones(window, prompt + window, dtype=torch.bool).tril(prompt)
    mask = torch.zeros(keep.shape, dtype=bf).masked_fill(~keep, torch.finfo(bf).min)[None, None]

    def attention(fn):
        with torch.autocast("cpu", dtype=bf):
            backward(lambda *t: fn(module, *t, mask, scaling=0.125), aq, ak, av)

    pieces = [
        ("LoRA masks", f"a step's bits ({step_bits:,})", "torch random_, int32", lambda: torch_bits(step_bits),
         "fused.random_bits", lambda: random_bits(step_bits)),
        ("LoRA masks", f"mask and product [{tokens}, {ffn}] bf16", "int16 compare, where, fp32 product", old_mask,
         "MaskDropout.keep, bf16 product", lambda: x * drop.keep(x.shape, bf)),
        ("RMSNorm", f"[{tokens}, {d}] fp32, fwd + bwd", "transformers' LlamaRMSNorm", lambda: backward(norm, h),
         "decoder.rms_norm", lambda: backward(lambda t: rms_norm(t, norm.weight, norm.variance_epsilon), h)),
        ("rotary", f"q and k [{heads} and {kv} heads, {tokens}, {hd}] bf16, fwd + bwd",
         "transformers' apply_rotary_pos_emb", lambda: backward(old_rotary, q, k), "decoder.rotate",
         lambda: backward(new_rotary, q, k)),
        ("attention", f"[{rows}, {heads} and {kv} heads, {window}, {prompt + window} keys] bf16, fwd + bwd",
         "transformers' eager_attention_forward", lambda: attention(eager_attention_forward),
         "packing.grouped_eager", lambda: attention(grouped_eager)),
    ]  # fmt: skip
    print(f"a packed training step's pieces, {tokens} tokens, median of 30, {hardware()}\n")
    print("| piece | shape | before | ms | now | ms | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for piece, shape, old, old_fn, new, new_fn in pieces:
        a, b = ms(old_fn), ms(new_fn)
        print(f"| {piece} | {shape} | {old} | {a:.3f} | {new} | {b:.3f} | {a / b:.2f}x |", flush=True)
    bits = torch_bits(x.numel()).view(x.shape)
    ours = random_bits(x.numel())
    keep_np, keep_t = ours >= drop.threshold, bits >= old_threshold
    print("\n| the mask's kernels alone, one [826, 1536] mask | ms |")
    print("|---|---|")
    for name, fn in (
        ("torch: int16 >= t", lambda: bits >= old_threshold),
        ("numpy: uint16 >= t", lambda: ours >= drop.threshold),
        ("torch: where(bool, bf16, 0)", lambda: torch.where(keep_t, x, 0)),
        ("torch: bool -> bf16", lambda: torch.from_numpy(keep_np).to(bf)),
        ("torch: uint8 -> bf16", lambda: torch.from_numpy(keep_np.view(np.uint8)).to(bf)),
        ("torch: bf16 * bf16", lambda: x * x),
    ):
        print(f"| {name} | {ms(fn):.3f} |")


if __name__ == "__main__":
    run(main)
