"""The item loss of a SASRec step at Amazon Clothing's shape, its implementations side by side, beside the floor
its matmuls set, then where the rest of a step goes.

    python benchmarks/item_loss.py                      # 746 labelled rows over 340,363 items, d = 64
    python benchmarks/item_loss.py --items 34600        # a tenth of Clothing

The two alternatives to torch's loss (gradients in the forward pass; blocks of rows and items with an online
log-sum-exp) give the same gradients (checked here) and are measured, not used: neither was enough faster.
Rows: about the labelled positions of a default batch (128 windows of 50) on Amazon-shaped data. Each loss runs
forward and backward (the seconds are the median of --repeats after a warm-up), with its peak memory above
what the inputs hold. The floor: 3 matmuls of n x |I| x d (scores, grad of the rows, grad of the items), 6 n |I| d
FLOPs, at the rate a large fp32 matmul reaches in the same process.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slmrec.cli import run
from slmrec.seqrec import CHUNKED_LOSS_SCORES, SeqRecConfig, build_seqrec
from slmrec.machine import hardware, peak_rss_mb
from slmrec.timing import matmul_rate, seconds


class GradientsInForward(torch.autograd.Function):
    """The alternative measured here (not used by the project): the mean cross-entropy of h @ items.T a chunk of
    rows at a time with the gradients computed in the forward pass while each chunk's scores exist, three
    matmuls per chunk where a loss recomputing the scores in its backward pass does four."""

    @staticmethod
    def forward(ctx, h, items, targets, rows):
        n = len(h)
        loss, grad_h, grad_items = h.new_zeros(()), torch.empty_like(h), torch.zeros_like(items)
        for i in range(0, n, rows):
            x, t = h[i : i + rows], targets[i : i + rows]
            scores = x @ items.T
            lse = scores.logsumexp(1)
            loss += (lse - scores.gather(1, t[:, None])[:, 0]).sum()
            g = scores.sub_(lse[:, None]).exp_()  # softmax - one-hot, over n: d loss / d scores
            g[torch.arange(len(t)), t] -= 1
            g.div_(n)
            grad_h[i : i + rows] = g @ items
            grad_items.addmm_(g.T, x)
        ctx.save_for_backward(grad_h, grad_items)
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_items = ctx.saved_tensors
        return grad_h * grad_loss, grad_items * grad_loss, None, None


class ItemBlocked(torch.autograd.Function):
    """The second alternative measured here (not used by the project): scores in blocks of rows x items small
    enough to stay in cache, the log-sum-exp accumulated over item blocks (online), the scores of each block
    recomputed in the backward pass: four matmuls and two exp passes, none of the n x |I| scores in memory."""

    @staticmethod
    def forward(ctx, h, items, targets, rows, block):
        lse = torch.full((len(h),), float("-inf"))
        for i in range(0, len(h), rows):
            acc = lse[i : i + rows]
            for j in range(0, len(items), block):
                torch.logaddexp(acc, torch.mm(h[i : i + rows], items[j : j + block].T).logsumexp(1), out=acc)
        ctx.save_for_backward(h, items, targets, lse)
        ctx.rows, ctx.block = rows, block
        return (lse - (h * items[targets]).sum(1)).mean()

    @staticmethod
    def backward(ctx, grad_loss):
        h, items, targets, lse = ctx.saved_tensors
        scale = grad_loss / len(h)
        grad_h, grad_items = torch.zeros_like(h), torch.zeros_like(items)
        for i in range(0, len(h), ctx.rows):
            x, gh = h[i : i + ctx.rows], grad_h[i : i + ctx.rows]
            for j in range(0, len(items), ctx.block):
                w = items[j : j + ctx.block]
                p = torch.mm(x, w.T).sub_(lse[i : i + ctx.rows, None]).exp_().mul_(scale)  # softmax / n
                gh.addmm_(p, w)
                grad_items[j : j + ctx.block].addmm_(p.T, x)
        grad_h -= scale * items[targets]  # the one-hot's part
        grad_items.index_add_(0, targets, -scale * h)
        return grad_h, grad_items, None, None, None


def matmul_flops():
    return matmul_rate([(2048, 2048)], 2048)


def main(rows: int = 746, items: int = 340_363, hidden: int = 64, repeats: int = 5):
    torch.manual_seed(0)
    h = torch.randn(rows, hidden, requires_grad=True)
    table = (0.02 * torch.randn(items, hidden)).requires_grad_()
    targets = torch.randint(0, items, (rows,))
    chunk = max(1, CHUNKED_LOSS_SCORES // items)

    def full():
        F.cross_entropy(h @ table.T, targets).backward()

    def torch_chunked():
        opts = nn.LinearCrossEntropyOptions(batch_chunk_size=chunk)
        F.linear_cross_entropy(h, table, targets, options=opts).backward()

    def fused():
        GradientsInForward.apply(h, table, targets, chunk).backward()

    def blocked():
        ItemBlocked.apply(h, table, targets, rows, 2048).backward()

    h.grad = table.grad = None
    F.linear_cross_entropy(h, table, targets, options=nn.LinearCrossEntropyOptions(batch_chunk_size=chunk)).backward()
    expected = h.grad.clone(), table.grad.clone()
    h.grad = table.grad = None
    blocked()
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-9) for a, b in zip((h.grad, table.grad), expected))

    flops = matmul_flops()
    floor = 6 * rows * items * hidden / flops
    print(
        f"{rows} rows x {items:,} items x d {hidden}; {hardware()}, fp32 matmul {flops / 1e12:.3f} TFLOP/s; "
        f"floor (3 matmuls) {floor:.3f} s\n"
    )
    print("| item loss, forward + backward | seconds | x floor |")
    print("|---|---|---|")
    for name, fn in (
        ("full logits (F.cross_entropy)", full),
        (f"F.linear_cross_entropy, chunks of {chunk} rows (the project's)", torch_chunked),
        (f"gradients in the forward pass, chunks of {chunk} rows", fused),
        (f"blocks of {rows} rows x 2,048 items, online log-sum-exp", blocked),
    ):
        s = seconds(fn, repeats)
        print(f"| {name} | {s:.3f} | {s / floor:.2f} |", flush=True)

    # What no exact loss avoids here: the matmuls at d = 64 (a block's, alone) and an exp over every score.
    with torch.no_grad():
        x, w, block = h.detach(), table.detach(), 2048
        p, gh, gw = torch.randn(rows, block), torch.zeros(rows, hidden), torch.zeros(block, hidden)
        parts = {
            "scores (x @ items.T)": lambda j: torch.mm(x, w[j : j + block].T),
            "grad of the rows (p @ items)": lambda j: gh.addmm_(p[:, : len(w[j : j + block])], w[j : j + block]),
            "grad of the items (p.T @ x)": lambda j: gw[: len(w[j : j + block])].addmm_(
                p[:, : len(w[j : j + block])].T, x
            ),
            "exp over the scores": lambda j: p.exp(),
        }
        print("\n| one pass over every item, blocks of 2,048 | seconds | GFLOP/s |\n|---|---|---|")
        for name, part in parts.items():
            s = seconds(lambda: [part(j) for j in range(0, items, block)], repeats)
            rate = f"{2 * rows * items * hidden / s / 1e9:.0f}" if name.startswith(("scores", "grad")) else ""
            print(f"| {name} | {s:.3f} | {rate} |", flush=True)

    # A whole SASRec step at this shape, and its parts.
    model = build_seqrec(SeqRecConfig(items)).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randint(1, items + 1, (128, 50))
    # Window lengths as Amazon's (at least 5 ratings, ~9 on average, the last two held out): left padding.
    lengths = np.minimum(50, 2 + np.random.default_rng(0).geometric(1 / 5.25, 128))
    for r, n in enumerate(lengths):
        x[r, : 50 - n] = 0
    y = x.roll(-1, 1)
    y[x == 0] = 0

    def step():
        model(x, y)["loss"].backward()
        opt.step()
        opt.zero_grad()

    def forward_backward():
        model(x, y)["loss"].backward()

    s_step = seconds(step, repeats)
    s_fb = seconds(forward_backward, repeats)
    model.zero_grad()
    forward_backward()
    s_opt = seconds(opt.step, repeats)
    n = int((y != 0).sum())
    step_floor = 6 * n * items * hidden / flops
    print(
        f"\nSASRec step, batch 128 x 50, {n} labelled positions: {s_step:.3f} s = {s_step / step_floor:.2f}x its item "
        f"head's floor ({step_floor:.3f} s); forward + backward {s_fb:.3f} s, AdamW over "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M values {s_opt:.3f} s; peak RSS "
        f"{peak_rss_mb() / 1024:.2f} GB"
    )


if __name__ == "__main__":
    run(main)
