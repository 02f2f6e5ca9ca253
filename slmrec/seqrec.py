"""Conventional sequential recommenders trained with cross-entropy over all items: SASRec.

Every model in the project exposes the same interface:
    forward(input_ids, labels) -> {"loss": ...}   (what transformers.Trainer calls)
    score(history [B, L], left-padded with 0) -> [B, num_items + 1] scores
"""

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset


@dataclass
class SASRecConfig:
    num_items: int
    max_len: int = 50
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    data_fingerprint: str = ""


class SASRec(nn.Module):
    """Self-attentive sequential recommendation (Kang & McAuley 2018), pre-norm blocks, shared item table."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.item_embedding = nn.Embedding(cfg.num_items + 1, d, padding_idx=0)
        self.position_embedding = nn.Embedding(cfg.max_len, d)
        self.dropout = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(d, cfg.num_heads, 4 * d, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def encode(self, seq):
        """[B, L] item ids (0 = padding, left) -> [B, L, d] causal representations."""
        B, L = seq.shape
        pos = torch.arange(L, device=seq.device)
        x = self.item_embedding(seq) * math.sqrt(self.cfg.hidden_size) + self.position_embedding(pos)
        x = self.dropout(x)
        # A position may attend to earlier real items and always to itself (so padded rows are not all-masked).
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()
        allowed = causal & (seq != 0)[:, None, :]
        allowed |= torch.eye(L, dtype=torch.bool, device=seq.device)
        mask = ~allowed.repeat_interleave(self.cfg.num_heads, dim=0)
        return self.norm(self.encoder(x, mask=mask))

    def checkpoint_config(self):
        return {"model_type": "sasrec", **dataclasses.asdict(self.cfg)}

    def forward(self, input_ids, labels):
        h = self.encode(input_ids)
        logits = h @ self.item_embedding.weight.T
        logits[..., 0] = float("-inf")
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=0)
        return {"loss": loss}

    def score(self, history):
        return self.encode(history)[:, -1] @ self.item_embedding.weight.T

    def item_table(self):
        return self.item_embedding.weight


class WindowDataset(Dataset):
    """Each user's training part cut into windows of max_len + 1 items, from the end backwards, so every
    training target is predicted exactly once per epoch; input = window[:-1], labels = window[1:]."""

    def __init__(self, data, max_len):
        self.max_len = max_len
        self.windows = []
        for u in range(data.num_users):
            seq = data.train_part(u)
            for end in range(len(seq), 1, -max_len):
                self.windows.append(seq[max(0, end - max_len - 1):end])

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, i):
        w = self.windows[i]
        x = np.zeros(self.max_len, np.int64)
        y = np.zeros(self.max_len, np.int64)
        x[self.max_len - len(w) + 1:] = w[:-1]
        y[self.max_len - len(w) + 1:] = w[1:]
        return {"input_ids": torch.from_numpy(x), "labels": torch.from_numpy(y)}


def load_sasrec(checkpoint_dir) -> SASRec:
    """Rebuild a trained SASRec from its output directory (weights + slmrec_config.json)."""
    from .training import load_checkpoint_files

    cfg, state = load_checkpoint_files(checkpoint_dir, "sasrec")
    model = SASRec(SASRecConfig(**cfg))
    model.load_state_dict(state)
    return model.eval()
