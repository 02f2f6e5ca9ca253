"""The E-LLMRec item loss (teacher, student, each L_ms head) at the shapes of a training step, side by side in one
process: the plain loss on the [n, |I| + 1] scores (eager, and compiled as --compile did until it was replaced),
and losses.frozen_item_loss, which never holds the scores (the item table does not train, so its one gradient is
summed in the same pass over blocks of items as the log-sum-exp).

    python benchmarks/frozen_item_loss.py

Each row: W_out's projection of n states (d1 = 576, SmolLM2) to the items' d = 64, the loss over all items, forward
and backward, median of --repeats after a warm-up, in fp32 or under bf16 autocast as a training step runs. n is a
batch of 16's supervised positions (every_position): 533 on ml-100k (1,682 items), ~100 on Amazon-shaped data
(a tenth of Clothing: 34,600 items; all of it: 340,363). The floor: the two products an exact loss needs (scores and
the gradient of the rows, 4 n |I| d FLOPs) at the rate a 2,048-square matmul reaches here in that precision. `max
grad diff`: the largest difference of the states' gradient from the plain fp32 loss's, over its largest entry.
"""

import torch
import torch.nn.functional as F

from slmrec.cli import run
from slmrec.losses import frozen_item_loss
from slmrec.machine import hardware, peak_rss_mb
from slmrec.timing import matmul_rate, seconds

SHAPES = (("ml-100k", 533, 1_682), ("clothing-tenth", 100, 34_600), ("clothing-full", 100, 340_363))


def plain(q, table, labels):
    """The loss as the model computed it before: every score, the padding column masked, then torch's loss."""
    scores = q @ table.T
    scores = scores.clone()  # the old loss took its scores from the caller and copied them before masking
    scores[:, 0] = float("-inf")
    return F.cross_entropy(scores, labels)


def main(repeats: int = 5, d1: int = 576, d: int = 64):
    compiled = torch.compile(plain, dynamic=True)
    print(f"{hardware()}; W_out {d1} -> {d}, forward + backward, median of {repeats}\n")
    print("| data | rows | items | precision | loss | seconds | x floor | speed-up | max grad diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rows, items in SHAPES:
        g = torch.Generator().manual_seed(0)
        table = torch.randn(items + 1, d, generator=g)
        w_out = torch.nn.Linear(d1, d, bias=False)
        h = torch.randn(rows, d1, generator=g).requires_grad_()
        labels = torch.randint(1, items + 1, (rows,), generator=g)
        tables = {torch.float32: table[1:].contiguous(), torch.bfloat16: table[1:].to(torch.bfloat16)}

        def step(loss, dtype):
            h.grad = None
            with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
                q = w_out(h)
                if loss is frozen_item_loss:
                    out = frozen_item_loss(q, tables[q.dtype], labels - 1)
                else:
                    out = loss(q, table, labels)  # autocast casts the table to bf16 at every call, as it did
            out.backward()
            return out.item(), h.grad.clone()

        _, reference = step(plain, torch.float32)
        for dtype in (torch.float32, torch.bfloat16):
            floor = 4 * rows * items * d / matmul_rate([(2048, 2048)], 2048, dtype)
            base = None
            for label, loss in (
                ("plain", plain),
                ("plain, compiled", compiled),
                ("frozen_item_loss", frozen_item_loss),
            ):
                _, grad = step(loss, dtype)
                s = seconds(lambda: step(loss, dtype), repeats)
                base = base or s
                diff = ((grad - reference).abs().max() / reference.abs().max()).item()
                print(
                    f"| {name} | {rows} | {items:,} | {str(dtype)[6:]} | {label} | {s:.4f} | {s / floor:.1f} | "
                    f"{base / s:.2f}x | {diff:.1e} |",
                    flush=True,
                )
    print(f"\npeak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    run(main)
