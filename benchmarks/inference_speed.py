"""Scoring speed of SASRec and E-LLMRec models (student, teacher, all layers), before and after each step of
the fast path, with the floor the arithmetic sets, as a table. Everything is timed in this one process, one
configuration after another.

    python benchmarks/inference_speed.py                          # ml-100k test histories, SmolLM2, this CPU
    python benchmarks/inference_speed.py --layers 8,4 --base_model random:llama-7b --users 256   # on a GPU

E-LLMRec models are built on the real LM with the dataset's item count and a random item table and heads:
the time is that of a trained model (the same shapes); benchmarks/inference_quality.py measures what each
step does to a trained model's test metrics. SASRec is a trained run directory when --sasrec names one,
else a fresh one. Histories are real test histories of the prepared dataset (their length spread is what
length grouping exploits).

Steps, each added to the one before:
  plain         ELLMRec.score under inference_mode and bf16 autocast over fp32 weights, batches in user order
                (trimmed to their longest history): the reference path
  bf16 weights  frozen weights held in bf16 (no per-call casts)
  merged LoRA   LoRA folded into the weights
  by length     batches of users with similar history length
  prefix cache  the instruction's keys and values computed once (FastELLMRec)
  bf16 residual the whole LM in bf16 (embeddings and norms too), no fp32 residual stream under autocast
  eager attn    (a side row) transformers' eager attention instead of torch's SDPA kernel
  own forward   the project's LLaMA forward (slmrec/decoder.py): fused q/k/v and gate/up products, grouped-query
                attention without repeated keys, only the read row through the last layer
  blocks        each batch run in blocks of about InferenceConfig.token_block tokens (whole histories), so a
                layer's intermediates stay in cache (every row above runs whole batches)
  compile       torch.compile of that forward (serve.py's choice, and a large pass's; its compile time is
                printed); a side row compiles it over whole batches
  int8          dynamic int8 weights, fp32 activations, transformers' forward (instead of bf16; CPU only)
Floor: users/s if every matmul ran at the throughput this machine reaches on the model's own layer shapes (measured
here at the same token count; at batch_size, the better of the batch's token count and a block's, measured again
right before each row's pass, since this shared machine's throughput drifts over minutes): FLOPs per user =
2 x weights in the kept layers x tokens (the instruction's and the history's; with the prefix cache only the
history's), attention scores and the item head left out (under 2% here). The own forward skips work (the last
layer's rows that are never read): "work floor" is the same for the FLOPs it does, so its share says how near the
hardware it runs, and the floor's share what a user gets.
"""

import time

import numpy as np
import torch

from slmrec.prepare import DEFAULT_DATA
from slmrec.cli import run
from slmrec.backbone import load_backbone
from slmrec.batches import history_batches, left_pad
from slmrec.data import PreparedData
from slmrec.inference import FastELLMRec, InferenceConfig, PlainScorer
from slmrec.model import ELLMRec, ELLMRecConfig
from slmrec.seqrec import SeqRecConfig, build_seqrec, load_seqrec
from slmrec.precision import compute_dtype, resolve_precision
from slmrec.flags import parse_ints
from slmrec.machine import compute_device, hardware
from slmrec.timing import linear_shapes, matmul_rate, seconds


DEVICE = compute_device()


def batches_of(histories, batch_size, max_len, by_length):
    """Every batch, left-padded and on the device beforehand, so the timing is the scoring's alone."""
    return [torch.from_numpy(p).to(DEVICE) for _, p in history_batches(histories, max_len, batch_size, by_length)]


def users_per_second(scorer, batches, repeats=1):
    """Users scored per second over all batches (after one warm-up batch), best of `repeats` passes."""
    scorer(batches[0])
    return sum(len(b) for b in batches) / seconds(lambda: [scorer(b) for b in batches], repeats, 0, "min")


def build(base_model, layers, num_items, max_len, readout="last_item"):
    g = torch.Generator().manual_seed(0)
    table = torch.randn(num_items + 1, 64, generator=g)
    cfg = ELLMRecConfig(base_model=base_model, num_layers=layers, max_len=max_len, readout=readout)
    model = ELLMRec(cfg, table, backbone=load_backbone(base_model, layers))
    for p in model.parameters():  # non-zero LoRA and heads, as after training
        if p.requires_grad and p.dim() > 1:
            torch.nn.init.normal_(p, std=0.02, generator=g)
    return model.eval()


def main(
    data: str = DEFAULT_DATA,
    base_model: str = "smollm2-135m",
    layers="4,8,30",
    batch_size: int = 128,
    users: int | None = None,
    batch1_users: int = 48,
    precision: str = "auto",
    int8: bool = True,
    sasrec: str | None = None,
    repeats: int = 2,
    only_fast: bool = False,
):
    """layers: the depths timed (4: the student, 8: the teacher, 30: all of SmolLM2); users: test histories
    timed at batch_size (default all), batch1_users: timed one at a time; only_fast: only the rows of the
    project's forward (uncompiled, blocks, compiled), the paths recommend.py and serve.py run: minutes, not 25."""
    torch.manual_seed(0)
    dataset = PreparedData(data)
    precision = resolve_precision(precision)
    dtype = compute_dtype(precision)
    rng = np.random.default_rng(0)
    max_len = 50
    picked = rng.permutation(dataset.num_users)[:users]
    histories = [dataset.history(int(u), "test") for u in picked]
    one = [torch.from_numpy(left_pad([h], max_len)).to(DEVICE) for h in histories[:batch1_users]]
    big = {g: batches_of(histories, batch_size, max_len, g) for g in (False, True)}
    hist_tokens = float(np.mean([min(len(h), max_len) for h in histories]))
    print(
        f"{base_model} on {dataset.path} test histories (mean length {hist_tokens:.1f}, at most {max_len}), "
        f"precision {precision}, batch 1 ({len(one)} users) and batch {batch_size} ({len(histories)} users), "
        f"{hardware()}, {torch.get_num_threads()} threads\n"
    )
    print(
        "| model | step | batch 1 users/s | ms/user | floor | batch "
        f"{batch_size} users/s | floor | of floor "
        "| work floor | of work floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")

    def row(model, step, u1, ub, floor1="", floorb=None, workb=None):
        share = f"{ub / floorb:.0%}" if floorb else ""
        workb = workb or floorb
        work = f"{workb:.0f} | {ub / workb:.0%}" if workb else " | "
        print(
            f"| {model} | {step} | {u1:.1f} | {1000 / u1:.1f} | {floor1} | {ub:.1f} | "
            f"{f'{floorb:.0f}' if floorb else ''} | {share} | {work} |",
            flush=True,
        )

    sr = load_seqrec(sasrec) if sasrec else build_seqrec(SeqRecConfig(dataset.num_items))
    sr_scorer = PlainScorer(sr.to(DEVICE).eval(), InferenceConfig(precision="fp32"), DEVICE)
    row("SASRec", "fp32", users_per_second(sr_scorer, one, repeats), users_per_second(sr_scorer, big[True], repeats))

    summary = {}
    block = InferenceConfig(precision=precision).token_block
    for n in parse_ints(layers):
        model = build(base_model, n, dataset.num_items, max_len).to(DEVICE)
        P = len(model.prefix_ids)
        shapes = linear_shapes(model)
        weights = sum(i * o for i, o in shapes)
        kinds = {"compute": dtype or torch.float32, "fp32": torch.float32}
        batch_tokens = int(batch_size * (P + hist_tokens))
        floors = {(kind, "1"): matmul_rate(shapes, int(P + hist_tokens), d, DEVICE) for kind, d in kinds.items()}

        def floor_big(kind):
            """Measured again before every row (this shared machine's throughput drifts over minutes): the better
            of a whole batch's token count and a block's, since the paths run either."""
            d = kinds[kind]
            floors[kind, "big"] = max(
                matmul_rate(shapes, batch_tokens, d, DEVICE), matmul_rate(shapes, min(block, batch_tokens), d, DEVICE)
            )
            return floors[kind, "big"]

        floor_big("fp32")
        full, cached = 2 * weights * (P + hist_tokens), 2 * weights * hist_tokens
        # the own forward: the last layer's k and v for every token, its other products for the read row only
        c = model.base_lm().config
        kv = (
            2
            * c.hidden_size
            * c.num_key_value_heads
            * (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
        )
        last = weights // n
        done = 2 * ((weights - last + kv) * hist_tokens + (last - kv))
        name = f"E-LLMRec {n} layers"

        def timed(step, scorer, grouped, kind="compute", flops=full, work=None):
            u1 = users_per_second(scorer, one, repeats)
            rate = floor_big(kind) if kind else None
            ub = users_per_second(scorer, big[grouped], repeats)
            f1, fb = (floors[kind, "1"] / flops, rate / flops) if kind else ("", None)
            row(name, step, u1, ub, f"{f1:.0f}" if kind else "", fb, rate / work if work else None)
            return ub

        whole = dict(precision=precision, token_block=0)
        base = transformers = None
        if only_fast:
            model.cast_frozen(dtype).merge_lora()
        else:
            plain = PlainScorer(model, InferenceConfig(precision=precision), DEVICE)
            base = timed("plain", plain, False)
            model.cast_frozen(dtype)
            timed("+ bf16 weights", plain, False)
            model.merge_lora()
            timed("+ merged LoRA", plain, False)
            timed("+ batches by length", plain, True)
            timed(
                "+ prefix cache",
                FastELLMRec(model, InferenceConfig(**whole, residual="fp32", decoder=False), DEVICE),
                True,
                flops=cached,
            )
            timed(
                "transformers' eager attention instead of SDPA",
                FastELLMRec(model, InferenceConfig(**whole, decoder=False, attention="eager"), DEVICE),
                True,
                flops=cached,
            )
            transformers = timed(
                "+ bf16 residual stream (SDPA)",
                FastELLMRec(model, InferenceConfig(**whole, decoder=False), DEVICE),
                True,
                flops=cached,
            )
        eager = timed(
            "+ own forward",
            FastELLMRec(model, InferenceConfig(**whole, compile=False), DEVICE),
            True,
            flops=cached,
            work=done,
        )
        timed(
            f"+ blocks of {block:,} tokens (recommend.py's default)",
            FastELLMRec(model, InferenceConfig(precision=precision, compile=False), DEVICE),
            True,
            flops=cached,
            work=done,
        )
        t = time.perf_counter()
        compiled = FastELLMRec(model, InferenceConfig(precision=precision, compile=True), DEVICE)
        compile_s = time.perf_counter() - t
        fast = timed(
            f"+ torch.compile ({compile_s:.0f} s to compile; serve.py's default)",
            compiled,
            True,
            flops=cached,
            work=done,
        )
        compiled_whole = timed(
            "compiled, whole batches instead of blocks",
            FastELLMRec(model, InferenceConfig(**whole, compile=True), DEVICE),
            True,
            flops=cached,
            work=done,
        )
        summary[n] = (base, fast, transformers, eager, compiled_whole)
        if int8 and DEVICE == "cpu":
            q = FastELLMRec(build(base_model, n, dataset.num_items, max_len), InferenceConfig(int8=True))
            timed("int8 weights, fp32 activations, prefix cache, by length", q, True, None)
        big, one = floors["compute", "big"] / 1e12, floors["compute", "1"] / 1e12
        print(
            f"|  | matmul throughput on these shapes: {precision} {big:.2f} TFLOP/s, fp32 "
            f"{floors['fp32', 'big'] / 1e12:.2f} (batch {batch_size}); {precision} {one:.2f} "
            f"(batch 1); {weights / 1e6:.1f} M weights in the layers, {P} instruction tokens |  |  |  |  |  |  |",
            flush=True,
        )
    depths = sorted(summary)
    if len(depths) > 1 and not only_fast:
        s, t = depths[0], depths[1]
        print(
            f"\nstudent ({s}) vs teacher ({t}) at batch {batch_size}: plain {summary[s][0] / summary[t][0]:.2f}x "
            f"the users/s, fast {summary[s][1] / summary[t][1]:.2f}x; fast vs plain: student "
            f"{summary[s][1] / summary[s][0]:.2f}x, teacher {summary[t][1] / summary[t][0]:.2f}x"
        )
    for n, (_, fast, transformers, eager, compiled_whole) in summary.items():
        own = "" if only_fast else f"own forward {eager / transformers:.2f}x transformers' (whole batches, eager), "
        print(f"{n} layers: {own}compiled in blocks {fast / compiled_whole:.2f}x compiled whole batches")


if __name__ == "__main__":
    run(main)
