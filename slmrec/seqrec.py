"""Conventional sequential recommenders trained with cross-entropy over all items: SASRec, GRU4Rec, BERT4Rec.

Every model in the project exposes the same interface:
    forward(input_ids, labels) -> {"loss": ...}   (what transformers.Trainer calls)
    score(history [B, L], left-padded with 0) -> [B, num_items + 1] scores
"""

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .batches import trim_padding
from .errors import FlagError
from .machine import check_memory


@dataclass
class SeqRecConfig:
    num_items: int
    model: str = "sasrec"  # sasrec, gru4rec or bert4rec
    max_len: int = 50
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    mask_prob: float = 0.2  # BERT4Rec: share of items masked in training
    # 0: the item loss is a softmax over all items; N: over the target and N items drawn uniformly from the
    # others, per labelled position (sampled softmax, as eSASRec/gSASRec train on large catalogues)
    negatives: int = 0
    data_fingerprint: str = ""

    def __post_init__(self):  # flags are checked when the config is made, before any work
        if self.model not in MODELS:
            raise FlagError(f"--model must be one of {sorted(MODELS)}, not {self.model!r}")
        if min(self.max_len, self.hidden_size, self.num_layers, self.num_heads) < 1:
            raise FlagError("--max_len, --hidden_size, --num_layers and --num_heads must be at least 1")
        if not 0 <= self.negatives < self.num_items:
            raise FlagError(f"--negatives must be in 0..{self.num_items - 1} (0: all items), not {self.negatives}")
        # the position table and its optimiser states (4 copies of max_len x hidden_size floats)
        check_memory(
            4 * 4 * (self.max_len + self.num_items) * self.hidden_size,
            f"--max_len {self.max_len} with --hidden_size {self.hidden_size}",
        )


# Above this many item scores in a batch (B x L x |I| floats: 256 MB) the item loss is computed at the labelled
# positions only, in chunks of rows recomputed in the backward pass (torch's linear_cross_entropy), so the whole
# score matrix never exists at once.
CHUNKED_LOSS_SCORES = 1 << 26


def item_cross_entropy(h, items, targets):
    """Mean cross-entropy of rows h [n, d] over the items [|I|, d] (padding left out), targets 0..|I|-1: what
    F.cross_entropy(h @ items.T, targets) gives, in chunks of rows of CHUNKED_LOSS_SCORES / |I| rows. The chunk
    is set, not left to "auto", which on a CPU chose a path 9x slower (8.5 s against 0.9 s for 746 rows over
    340 k items, AMD Zen 5, fp32; the full-logit loss took 1.9 s there). A loss computing its gradients in the
    forward pass (three matmuls a chunk, not four) was slower still here: benchmarks/item_loss.py."""
    rows = max(1, CHUNKED_LOSS_SCORES // items.shape[0])
    return F.linear_cross_entropy(h, items, targets, options=nn.LinearCrossEntropyOptions(batch_chunk_size=rows))


def sampled_cross_entropy(h, table, targets, negatives):
    """Mean cross-entropy of rows h [n, d] over their target (ids 1..|I|, rows of table [|I|+1, d]) and
    `negatives` items drawn uniformly, with repeats, from 1..|I|, the same for every row of the batch (one
    [n, N] matmul; a draw per row would gather n x N item vectors); where a row's target was drawn, that draw
    is left out of its row, so the positive is never its own negative."""
    neg = torch.randint(1, table.shape[0], (negatives,), device=h.device)
    pos = (h * table[targets]).sum(-1, keepdim=True)
    scores = (h @ table[neg].T).masked_fill(neg[None, :] == targets[:, None], float("-inf"))
    return F.cross_entropy(torch.cat([pos, scores], 1), torch.zeros_like(targets))


class SeqRec(nn.Module):
    """What the three models share: an item table (row 0 = padding) that also scores, CE over all items."""

    extra_tokens = 0  # BERT4Rec adds a mask token after the items

    def __init__(self, cfg: SeqRecConfig):
        super().__init__()
        self.cfg = cfg
        self.item_embedding = nn.Embedding(cfg.num_items + 1 + self.extra_tokens, cfg.hidden_size, padding_idx=0)
        self.dropout = nn.Dropout(cfg.dropout)

    def init_tables(self, *tables):
        """Small normal item (and position) tables, padding row zero; called last by each model."""
        for t in (self.item_embedding, *tables):
            nn.init.normal_(t.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def hidden(self, seq):
        """[B, L] left-padded item ids -> [B, L, d]: position t summarises what the model may see at t."""
        raise NotImplementedError

    def logits(self, h):
        """[..., d] -> [..., num_items + 1] (padding column -inf)."""
        out = h @ self.item_table().T
        out[..., 0] = float("-inf")
        return out

    def forward(self, input_ids, labels):
        if self.cfg.negatives:
            h = self.hidden(input_ids)
            rows = labels != 0
            return {"loss": sampled_cross_entropy(h[rows], self.item_table(), labels[rows], self.cfg.negatives)}
        if labels.numel() * self.cfg.num_items <= CHUNKED_LOSS_SCORES:
            # Every position's scores, padding included: cheap on a small catalogue, and the computation the
            # recorded ml-100k runs were trained with (the other path agrees to rounding, not bit for bit).
            h = self.hidden(input_ids)
            return {"loss": F.cross_entropy(self.logits(h).flatten(0, 1), labels.flatten(), ignore_index=0)}
        # A large catalogue (Amazon-sized data, where most of a padded window is padding): the batch's columns that
        # are padding in every window dropped (positions count from the right end, so only rounding changes),
        # then the positions that carry a label only, in chunks.
        input_ids, labels = trim_padding(input_ids, labels)
        h = self.hidden(input_ids)
        rows = labels != 0
        return {"loss": item_cross_entropy(h[rows], self.item_table()[1:], labels[rows] - 1)}

    def user_states(self, history):
        """[B, d]: the state after each left-padded history, computed over the batch's longest history only
        (on Amazon-sized data most of a 50-item window is padding)."""
        return self.hidden(trim_padding(history)[0])[:, -1]

    def score(self, history):
        return self.logits(self.user_states(history))

    def item_table(self):
        return self.item_embedding.weight[: self.cfg.num_items + 1]

    def checkpoint_config(self):
        return {"model_type": "seqrec", **dataclasses.asdict(self.cfg)}


class SASRec(SeqRec):
    """Self-attentive sequential recommendation (Kang & McAuley 2018), pre-norm blocks, shared item table."""

    causal = True

    def __init__(self, cfg: SeqRecConfig):
        super().__init__(cfg)
        d = cfg.hidden_size
        self.position_embedding = nn.Embedding(cfg.max_len, d)
        layer = nn.TransformerEncoderLayer(
            d, cfg.num_heads, 4 * d, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.init_tables(self.position_embedding)

    def hidden(self, seq):
        B, L = seq.shape
        # Positions count from the window's right end, so a batch trimmed of its padding scores as the full one.
        pos = torch.arange(self.cfg.max_len - L, self.cfg.max_len, device=seq.device)
        x = self.item_embedding(seq) * math.sqrt(self.cfg.hidden_size) + self.position_embedding(pos)
        x = self.dropout(x)
        # A position attends to real items (earlier ones only when causal) and always to itself, so padded
        # rows are never all-masked.
        allowed = (seq != 0)[:, None, :].expand(B, L, L)
        if self.causal:
            allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()
        allowed = allowed | torch.eye(L, dtype=torch.bool, device=seq.device)
        mask = ~allowed.repeat_interleave(self.cfg.num_heads, dim=0)
        return self.norm(self.encoder(x, mask=mask))


class BERT4Rec(SASRec):
    """BERT4Rec (Sun et al. 2019): bidirectional blocks trained to fill in masked items (the cloze task);
    to recommend, a mask token follows the history. It trains on the target side of each window
    (`labels`: the window's last max_len items)."""

    causal = False
    extra_tokens = 1

    @property
    def mask_id(self):
        return self.cfg.num_items + 1

    def forward(self, input_ids, labels):
        seq = labels
        real = seq != 0
        masked = (torch.rand(seq.shape, device=seq.device) < self.cfg.mask_prob) & real
        # Every row predicts at least one item: its last.
        masked[:, -1] |= ~masked.any(1) & real[:, -1]
        inputs = torch.where(masked, torch.full_like(seq, self.mask_id), seq)
        targets = torch.where(masked, seq, torch.zeros_like(seq))
        return super().forward(inputs, targets)

    def user_states(self, history):
        shifted = torch.cat([history[:, 1:], torch.full_like(history[:, :1], self.mask_id)], dim=1)
        return super().user_states(shifted)


class GRU4Rec(SeqRec):
    """GRU4Rec (Hidasi et al. 2016) with cross-entropy over all items; padding is skipped by packing."""

    def __init__(self, cfg: SeqRecConfig):
        super().__init__(cfg)
        self.gru = nn.GRU(
            cfg.hidden_size,
            cfg.hidden_size,
            cfg.num_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.init_tables()

    def hidden(self, seq):
        B, L = seq.shape
        lengths = (seq != 0).sum(1)
        pads = (L - lengths)[:, None]
        j = torch.arange(L, device=seq.device)[None]
        # Left padding -> right padding for packing, and back afterwards.
        right = seq.gather(1, (j + pads) % L)
        packed = nn.utils.rnn.pack_padded_sequence(
            self.dropout(self.item_embedding(right)), lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=L)
        return out.gather(1, ((j - pads) % L)[..., None].expand(-1, -1, out.shape[-1]))


MODELS = {"sasrec": SASRec, "gru4rec": GRU4Rec, "bert4rec": BERT4Rec}


def build_seqrec(cfg: SeqRecConfig) -> SeqRec:
    return MODELS[cfg.model](cfg)


def load_seqrec(checkpoint_dir) -> SeqRec:
    """Rebuild a trained SASRec/GRU4Rec/BERT4Rec from its output directory (weights + slmrec_config.json)."""
    from .checkpoints import load_checkpoint_files

    cfg, state = load_checkpoint_files(checkpoint_dir, "seqrec")
    model = build_seqrec(SeqRecConfig(**cfg))
    model.load_state_dict(state)
    return model.eval()
