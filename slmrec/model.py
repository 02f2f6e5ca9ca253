"""The E-LLMRec model (paper §3) that teacher and student share: frozen item embeddings projected into a
truncated LM (LoRA), the final position's state after the final norm, a linear head onto the item table.

Prompt layout for a history of n real items, padded to L on the far left of the whole sequence:

    [pad x (L - n)] [instruction tokens] [W_in e_1 ... W_in e_n] [response tokens]

so every real token is contiguous; position ids count from the first real token.
"""

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.utils.data import Dataset

from .backbone import decoder_layers, load_backbone
from .training import CheckpointError, load_checkpoint_files, load_trained_weights

log = logging.getLogger(__name__)

INSTRUCTION = ("Below is a user's interaction history, oldest first. "
               "Recommend the item the user will interact with next.\n### History:\n")
RESPONSE = "\n### Next item:"


@dataclass
class ELLMRecConfig:
    base_model: str = "smollm2-135m"
    num_layers: int = 8
    num_items: int = 0
    item_dim: int = 0
    max_len: int = 50
    instruction: str = INSTRUCTION
    response: str = RESPONSE
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list = field(default_factory=lambda: ["gate_proj", "up_proj", "down_proj"])
    adapter_layers: list = field(default_factory=list)  # layers with an extra item head W_a (SLMRec's L_ms)
    dtype: str = "auto"
    quantization: str | None = None
    data_fingerprint: str = ""
    embedding_digest: str = ""


class ELLMRec(nn.Module):
    def __init__(self, cfg: ELLMRecConfig, item_embedding: torch.Tensor, backbone=None):
        super().__init__()
        self.cfg = cfg
        lm, tokenizer = backbone or load_backbone(cfg.base_model, cfg.num_layers, cfg.dtype, cfg.quantization)
        cfg.num_items, cfg.item_dim = item_embedding.shape[0] - 1, item_embedding.shape[1]
        d0, d1 = cfg.item_dim, lm.config.hidden_size
        # Frozen and saved with the checkpoint, so a trained model scores without the pickle.
        self.register_buffer("item_embedding", item_embedding.float().clone())
        for p in lm.parameters():
            p.requires_grad_(False)
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_targets), bias="none")
        self.lm = get_peft_model(lm, lora)
        self.w_in = nn.Linear(d0, d1)
        # Zero heads: uniform scores, loss = ln|I| at the start. A random head on SASRec's large-scale
        # embeddings starts far above that and stalls for hundreds of steps (SPEC §2).
        self.w_out = nn.Linear(d1, d0, bias=False)
        self.adapters = nn.ModuleList(nn.Linear(d1, d0, bias=False) for _ in cfg.adapter_layers)
        for head in [self.w_out, *self.adapters]:
            nn.init.zeros_(head.weight)
        ids = lambda text, special: torch.tensor(tokenizer(text, add_special_tokens=special)["input_ids"])
        self.register_buffer("prefix_ids", ids(cfg.instruction, True), persistent=False)
        self.register_buffer("suffix_ids", ids(cfg.response, False), persistent=False)
        self._states = None
        for layer in decoder_layers(self.lm.get_base_model()):
            layer.register_forward_hook(self._capture)

    # ------------------------------------------------------------------ forward pieces

    def _capture(self, module, args, output):
        if self._states is not None:
            out = output[0] if isinstance(output, tuple) else output
            self._states.append(out[:, -1])

    def embed(self, history):
        """(inputs_embeds, attention_mask, position_ids) for left-padded histories [B, L]."""
        B, L = history.shape
        table = self.lm.get_input_embeddings()
        dtype = table.weight.dtype
        prefix = table(self.prefix_ids).expand(B, -1, -1)
        suffix = table(self.suffix_ids).expand(B, -1, -1)
        items = self.w_in(self.item_embedding[history]).to(dtype)
        source = torch.cat([prefix, items, suffix], dim=1)  # prefix before the padding: moved below
        P, T = prefix.shape[1], source.shape[1]
        pads = (history == 0).sum(1, keepdim=True)  # k pads per row, all at the left of the history
        j = torch.arange(T, device=history.device).expand(B, -1)
        # Row layout wanted: k pads, then the prefix, then the real items and the response. Positions
        # from k + P on already hold the right token; positions k..k+P-1 take the prefix; pads take anything.
        index = torch.where(j < pads + P, (j - pads).clamp(min=0), j)
        embeds = source.gather(1, index[..., None].expand(-1, -1, source.shape[-1]))
        mask = (j >= pads).long()
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        return embeds, mask, position_ids

    def encode(self, history, layer_states=False):
        """Final-position state after the final norm [B, d1]; with layer_states, also the final-position
        output of every decoder layer (before any norm), a list of num_layers tensors [B, d1]."""
        embeds, mask, position_ids = self.embed(history)
        self._states = [] if layer_states else None
        try:
            out = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False)
            states = self._states
        finally:
            self._states = None
        h = out.last_hidden_state[:, -1].float()
        return (h, [s.float() for s in states]) if layer_states else h

    def item_scores(self, h, head=None):
        """[B, num_items + 1] scores of user states projected by a head (default W_out) onto the item table."""
        return (head or self.w_out)(h) @ self.item_embedding.T

    def score(self, history):
        return self.item_scores(self.encode(history))

    def score_layers(self, history, layers):
        """Direct inference from intermediate layers (paper Fig. 2), all from one forward pass:
        {layer: scores}, the state after each layer through the final norm and W_out, without retraining."""
        bad = [l for l in layers if not 1 <= l <= self.cfg.num_layers]
        if bad:
            raise ValueError(f"layers {bad} outside 1..{self.cfg.num_layers}")
        _, states = self.encode(history, layer_states=True)
        norm = self.lm.get_base_model().norm
        return {l: self.item_scores(norm(states[l - 1].to(norm.weight.dtype)).float()) for l in layers}

    def forward(self, input_ids, labels, layer_states=False):
        """{"loss"}; with layer_states also "scores", every layer's final-position "states", and the
        "adapter_scores" of the adapter heads. Distillation goes through here, so DDP sees every use."""
        if not layer_states:
            return {"loss": item_loss(self.score(input_ids), labels)}
        h, states = self.encode(input_ids, layer_states=True)
        scores = self.item_scores(h)
        adapter_scores = [self.item_scores(states[l - 1], head) for l, head in zip(self.cfg.adapter_layers,
                                                                                    self.adapters)]
        return {"loss": item_loss(scores, labels), "scores": scores, "states": states,
                "adapter_scores": adapter_scores}

    def checkpoint_config(self):
        return {"model_type": "ellmrec", **dataclasses.asdict(self.cfg)}


def item_loss(scores, labels):
    """Cross-entropy over all items (paper eq. 1); column 0 is padding and never a prediction."""
    scores = scores.clone()
    scores[:, 0] = float("-inf")
    return F.cross_entropy(scores, labels)


class NextItemDataset(Dataset):
    """One example per next-item target inside each user's training part: (the items before it, the item).
    max_per_user keeps each user's most recent targets only (None = all)."""

    def __init__(self, data, max_len, max_per_user=None):
        self.data, self.max_len = data, max_len
        users, targets = [], []
        for u in range(data.num_users):
            n = len(data.train_part(u))
            ts = np.arange(1, n)
            if max_per_user:
                ts = ts[-max_per_user:]
            users.append(np.full(len(ts), u, np.int32))
            targets.append(ts.astype(np.int32))
        self.users, self.positions = np.concatenate(users), np.concatenate(targets)

    def __len__(self):
        return len(self.users)

    def __getitem__(self, i):
        seq = self.data.train_part(int(self.users[i]))
        t = int(self.positions[i])
        hist = seq[max(0, t - self.max_len):t]
        x = np.zeros(self.max_len, np.int64)
        x[self.max_len - len(hist):] = hist
        return {"input_ids": torch.from_numpy(x), "labels": torch.tensor(int(seq[t]))}


def check_same_data(cfg: ELLMRecConfig, data, where):
    if cfg.data_fingerprint != data.fingerprint or cfg.num_items != data.num_items:
        raise CheckpointError(f"{where} was trained on dataset {cfg.data_fingerprint} ({cfg.num_items} items), "
                              f"but {data.path} is {data.fingerprint} ({data.num_items} items)")


def load_ellmrec(checkpoint_dir, data=None, backbone=None) -> ELLMRec:
    """Rebuild a trained model from its checkpoint alone (the base LM is reloaded from the source it names)."""
    cfg, state = load_checkpoint_files(checkpoint_dir, "ellmrec")
    cfg = ELLMRecConfig(**cfg)
    if data is not None:
        check_same_data(cfg, data, checkpoint_dir)
    model = ELLMRec(cfg, state["item_embedding"], backbone)
    load_trained_weights(model, state, checkpoint_dir)
    return model.eval()
