"""How large each term of eq. 6 is when distillation starts: a trained teacher, a fresh student, real
training batches (the default every-position objective unless --objective last_target), every D_norm variant.
Shows whether the loss weights balance the terms on your LM.

    python benchmarks/loss_scales.py --teacher out/main/teacher --data data/ml-100k

Values are means over the batches, in eval mode (no dropout), fp32.
"""

import torch

from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.distill import DistillConfig, distill_loss, load_teacher, student_config
from slmrec.efficiency import sample_batches
from slmrec.examples import ExampleConfig, training_examples
from slmrec.losses import NORM_VARIANTS, block_pairs, norm_loss
from slmrec.model import ELLMRec
from slmrec.runtime import seed_everything


def main(teacher, data, num_layers=4, batch_size=16, batches=4, objective="every_position", seed=42, **distill):
    """distill: DistillConfig fields (--blocks, --lambda_cos, --lambda_norm, --lambda_ms); its defaults otherwise.
    Every D_norm variant is shown with the weight lambda_norm."""
    seed_everything(seed)
    dataset = PreparedData(data)
    dcfg = DistillConfig(teacher, **distill)
    blocks, lambda_cos, lambda_norm, lambda_ms = dcfg.blocks, dcfg.lambda_cos, dcfg.lambda_norm, dcfg.lambda_ms
    t = load_teacher(dcfg, dataset, num_layers)
    student = ELLMRec(student_config(t.cfg, num_layers, dcfg), t.item_embedding).eval()
    pairs = block_pairs(t.cfg.num_layers, num_layers, blocks)
    sums, norms = {}, {"teacher": [0.0] * len(pairs), "student": [0.0] * len(pairs)}
    examples = training_examples(dataset, t.cfg.max_len, ExampleConfig(objective))
    for batch in sample_batches(examples, batch_size, batches, seed=seed):
        x, y = batch["input_ids"], batch["labels"]
        with torch.no_grad():
            _, terms, out = distill_loss(student, t, dcfg, pairs, x, y)
            t_states = t.supervised(x, y, layer_states=True)["states"]  # distill_loss keeps them to itself
        t_feats = [t_states[tl - 1] for tl, _ in pairs]
        s_feats = [out["states"][sl - 1] for _, sl in pairs]
        for variant in NORM_VARIANTS:
            terms[f"norm ({variant})"] = norm_loss(t_feats, s_feats, variant)
        del terms["norm"]
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.item() / batches
        for i, (t_feat, s_feat) in enumerate(zip(t_feats, s_feats)):
            norms["teacher"][i] += t_feat.norm(dim=-1).mean().item() / batches
            norms["student"][i] += s_feat.norm(dim=-1).mean().item() / batches
    weights = {"ce": 1.0, "cos": lambda_cos, "ms": lambda_ms, **{f"norm ({v})": lambda_norm for v in NORM_VARIANTS}}
    print(
        f"teacher {teacher} ({t.cfg.num_layers} layers), fresh {num_layers}-layer student, B={blocks}, "
        f"{batches} batches of {batch_size} from {data}, objective {objective}"
    )
    print("| term | value | weight | weighted | weighted / L_ce |\n|---|---|---|---|---|")
    for k, v in sums.items():
        w = weights[k]
        print(f"| {k} | {v:,.4g} | {w:g} | {w * v:,.4g} | {w * v / sums['ce']:,.3g} |")
    print("\nmean L2 norm of the supervised hidden states at each aligned block (teacher layer / student layer)")
    print("| block | teacher layer | teacher norm | student layer | student norm |\n|---|---|---|---|---|")
    for i, (tl, sl) in enumerate(pairs):
        print(f"| {i + 1} | {tl} | {norms['teacher'][i]:.1f} | {sl} | {norms['student'][i]:.1f} |")


if __name__ == "__main__":
    run(main)
