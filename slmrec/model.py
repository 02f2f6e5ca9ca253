"""The E-LLMRec model (paper §3) that teacher and student share: frozen item embeddings projected into a
truncated LM (LoRA), a user state read after the final norm, a linear head onto the item table.

Prompt layout for a history of n real items, left-padded to L:

    [instruction tokens (P)] [pad x (L - n)] [W_in e_1 ... W_in e_n] ([response tokens])

The padding is masked out of attention and position ids count real tokens only, so every real token sees the
same keys at the same positions (the instruction at 0..P-1, the items from P) as with all padding at the far
left of the sequence (SPEC §2). The instruction is the same for every row and causal attention keeps it from
seeing the rest, so training computes it once per batch and packs the rows' real tokens after it, padding-free
(slmrec/packing.py); the fast scoring path (slmrec/inference.py) computes it once for all batches. The
response marker is there only when it is the readout (`readout="response"`, the paper's); with
`readout="last_item"` the user is read at the last history item's position.

Two training objectives share the model, told apart by the labels' shape:
  - labels [B]: one target per example, read at the readout position (the paper's unit);
  - labels [B, L] (0 = none): every-position supervision, the state after each history item predicts the
    next one, as SASRec trains. Causal attention makes that state a function of the items up to it alone,
    so one pass over a window supervises all of its targets (with the response readout, the marker also
    predicts the window's last target).
"""

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from torch.nn import functional as F

from . import fused, packing
from .fused import MaskDropout
from .backbone import decoder_layers, load_backbone
from .checkpoints import CheckpointError, load_checkpoint_files, load_trained_weights
from .batches import trim_padding
from .losses import frozen_item_loss
from .precision import compute_dtype, cpu_measurement
from .errors import FlagError

log = logging.getLogger(__name__)

INSTRUCTION = (
    "Below is a user's interaction history, oldest first. "
    "Recommend the item the user will interact with next.\n### History:\n"
)
RESPONSE = "\n### Next item:"
READOUTS = ("last_item", "response")


@dataclass
class ELLMRecConfig:
    base_model: str = "smollm2-135m"
    num_layers: int = 8
    num_items: int = 0
    item_dim: int = 0
    max_len: int = 50
    readout: str = "last_item"  # last_item: the state after the last history item; response: the response marker
    instruction: str = INSTRUCTION
    response: str = RESPONSE
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list = field(default_factory=lambda: ["gate_proj", "up_proj", "down_proj"])
    # transformers' attention in training: sdpa (torch's kernel), eager (the same function rounded differently), or
    # auto: in bf16 or fp16 on a CPU the faster of the two, measured once per CPU (training_attention), sdpa
    # elsewhere (benchmarks/README.md, "Training speed")
    attention: str = "auto"
    # the LM computes the instruction once per batch and the rows' real tokens packed after it, no padding
    # (model._lm, slmrec/packing.py); False: the instruction in every row of a padded batch, as the original did
    # (the reference tests/test_train_step.py and benchmarks/train_speed.py use)
    instruction_once: bool = True
    # the packed step through slmrec/fused.py (fewer operators, the same computation) where the LM allows it;
    # False: transformers' forward of the packed batch
    fused: bool = True
    adapter_layers: list = field(default_factory=list)  # layers with an extra item head W_a (SLMRec's L_ms)
    dtype: str = "auto"
    quantization: str | None = None
    data_fingerprint: str = ""
    embedding_digest: str = ""

    def __post_init__(self):  # flags are checked when the config is made, before any work
        if self.attention not in ("auto", "sdpa", "eager"):
            raise FlagError(f"--attention must be auto, sdpa or eager, not {self.attention!r}")
        if self.readout not in READOUTS:
            raise FlagError(f"--readout must be one of {READOUTS}, not {self.readout!r}")
        if self.max_len < 1 or self.num_layers < 1:
            raise FlagError(f"--max_len and --num_layers must be at least 1, not {self.max_len}, {self.num_layers}")
        if not 0 <= self.lora_dropout < 1:
            raise FlagError(f"--lora_dropout must be in [0, 1), not {self.lora_dropout}")


# Set by the scripts from the data, the embeddings and the distillation config, never by a flag.
DERIVED_FIELDS = ("num_items", "item_dim", "adapter_layers", "data_fingerprint", "embedding_digest")


class ELLMRec(nn.Module):
    def __init__(self, cfg: ELLMRecConfig, item_embedding: torch.Tensor, backbone=None, precision=None):
        """precision: the one a training run computes in (slmrec/precision.py); the frozen decoder weights are
        then held in its dtype from the start (cast_frozen), as autocast would use them."""
        super().__init__()
        self.cfg = cfg
        lm, tokenizer = backbone or load_backbone(cfg.base_model, cfg.num_layers, cfg.dtype, cfg.quantization)
        prompt = len(tokenizer(cfg.instruction)["input_ids"]) + len(tokenizer(cfg.response)["input_ids"])
        limit = getattr(lm.config, "max_position_embeddings", None)
        if limit and cfg.max_len + prompt > limit:
            raise FlagError(
                f"--max_len {cfg.max_len}: with the prompt's {prompt} tokens the input exceeds the LM's "
                f"{limit} positions; use at most {limit - prompt}"
            )
        cfg.num_items, cfg.item_dim = item_embedding.shape[0] - 1, item_embedding.shape[1]
        d0, d1 = cfg.item_dim, lm.config.hidden_size
        # Frozen and saved with the checkpoint, so a trained model scores without the pickle.
        self.register_buffer("item_embedding", item_embedding.float().clone())
        self._table, self._table_key = None, None  # item_table's cast
        for p in lm.parameters():
            p.requires_grad_(False)
        lm.set_attn_implementation(packing.attention_name(training_attention(cfg.attention, precision)))
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_targets),
            bias="none",
        )
        self.lm = _with_lora(lm, lora, cfg.lora_targets)
        for module in self.lm.modules():
            if isinstance(getattr(module, "lora_dropout", None), nn.ModuleDict):
                # LoRA takes the projection's input as it comes: peft would cast a bf16 input (down_proj's, under
                # autocast) up to the adapter's fp32 for autocast to cast it back; MaskDropout's product with
                # its scale rounds to the same values.
                module.cast_input_dtype_enabled = False
                for name, dropout in module.lora_dropout.items():
                    if isinstance(dropout, nn.Dropout):
                        module.lora_dropout[name] = MaskDropout(dropout.p)
        self.w_in = nn.Linear(d0, d1)
        # Zero heads: uniform scores, loss = ln|I| at the start. A random head on SASRec's large-scale
        # embeddings starts far above that and stalls for hundreds of steps (docs/training.md, "The teacher").
        self.w_out = nn.Linear(d1, d0, bias=False)
        self.adapters = nn.ModuleList(nn.Linear(d1, d0, bias=False) for _ in cfg.adapter_layers)
        for head in [self.w_out, *self.adapters]:
            nn.init.zeros_(head.weight)
        ids = lambda text, special: torch.tensor(tokenizer(text, add_special_tokens=special)["input_ids"])
        self.register_buffer("prefix_ids", ids(cfg.instruction, True), persistent=False)
        self.register_buffer("suffix_ids", ids(cfg.response, False), persistent=False)
        self._states, self._fused = None, None
        self.compile_training = False  # TrainConfig.compile, set by the training scripts
        for layer in decoder_layers(self.base_lm()):
            layer.register_forward_hook(self._capture)
        if precision is not None:
            self.cast_frozen(compute_dtype(precision))

    # ------------------------------------------------------------------ forward pieces

    def _capture(self, module, args, output):
        if self._states is not None:
            self._states.append(output[0] if isinstance(output, tuple) else output)

    def embed(self, history):
        """(inputs_embeds, attention_mask, position_ids) of the prompt after the instruction, for left-padded
        histories [B, L]: [pad x (L - n)] [W_in e_1 ... W_in e_n] ([response]), the mask and positions covering
        the instruction's P tokens too ([B, P + T]). Positions count real tokens only, so the items sit at P..
        whatever their padding."""
        B, P = history.shape[0], len(self.prefix_ids)
        table = self.lm.get_input_embeddings()
        parts = [self.w_in(self.item_embedding[history]).to(table.weight.dtype)]
        if self.cfg.readout == "response":
            parts.append(table(self.suffix_ids).expand(B, -1, -1))
        embeds = torch.cat(parts, dim=1)
        ones = lambda n: torch.ones(B, n, dtype=torch.long, device=history.device)
        mask = torch.cat([ones(P), (history != 0).long(), ones(embeds.shape[1] - history.shape[1])], dim=1)
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        return embeds, mask, position_ids

    def _lm(self, history):
        """The LM's hidden states [B, T, d] of the prompt after the instruction (see embed), and a function that
        brings a decoder layer's output into the same layout. With instruction_once, one padding-free sequence
        (slmrec/packing.py): the instruction once, then every row's real tokens; else the instruction in every
        row of the padded batch (the reference: every real token sees the same keys at the same positions, so
        the same states to rounding)."""
        embeds, mask, position_ids = self.embed(history)
        P, table = len(self.prefix_ids), self.lm.get_input_embeddings()
        if not self.cfg.instruction_once:
            embeds = torch.cat([table(self.prefix_ids).expand(len(history), -1, -1), embeds], 1)
            out = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False)
            return out.last_hidden_state[:, P:], lambda s: s[:, P:]
        B, T, d = embeds.shape
        pack = packing.layout(mask[:, P:].bool(), P)
        embeds = torch.cat([table(self.prefix_ids), embeds.reshape(B * T, d).index_select(0, pack.flat)])
        positions = torch.cat([position_ids[0, :P], position_ids[:, P:].flatten().index_select(0, pack.flat)])
        if self.cfg.fused and fused.supports(self.base_lm()):
            if self._fused is None or (self._fused.lm, self._fused.compiled) != (self.base_lm(), self.compile_training):
                self._fused = fused.FusedForward(self.base_lm(), self.compile_training)
            return pack.gather(self._fused(embeds[None], positions[None], pack, self._states)), pack.gather
        out = self.lm(
            inputs_embeds=embeds[None],
            attention_mask=pack.rows,  # 4-D: transformers passes it on as it is
            position_ids=positions[None],
            use_cache=False,
            packing=pack,
        )
        return pack.gather(out.last_hidden_state), pack.gather

    def _read(self, x, L, every_position):
        """The readout position of x [B, T, d] ([B, d]); with every_position, each history column's position
        (then the response marker's, when it is the readout) [B, L (+1), d]."""
        if not every_position:
            return x[:, -1]  # the response marker's last token, or the last item when there is no marker
        items = x[:, :L]
        return torch.cat([items, x[:, -1:]], 1) if self.cfg.readout == "response" else items

    def encode(self, history, layer_states=False, every_position=False):
        """User states after the final norm at the readout position [B, d1] (with every_position, at every
        history position, see _read); with layer_states, also every decoder layer's output (before any
        norm) at the same positions, a list of num_layers tensors."""
        self._states = [] if layer_states else None
        try:
            x, layout = self._lm(history)
            states = [layout(s) for s in self._states] if layer_states else None
        finally:
            self._states = None
        L = history.shape[1]
        h = self._read(x, L, every_position).float()
        return (h, [self._read(s, L, every_position).float() for s in states]) if layer_states else h

    def item_scores(self, h, head=None):
        """[..., num_items + 1] scores of user states projected by a head (default W_out) onto the item table."""
        return (head or self.w_out)(h) @ self.item_embedding.T

    def score(self, history):
        return self.item_scores(self.encode(trim_padding(history)[0]))

    def score_layers(self, history, layers):
        """Direct inference from intermediate layers (paper Fig. 2), all from one forward pass:
        {layer: scores}, the state after each layer through the final norm and W_out, without retraining."""
        bad = [l for l in layers if not 1 <= l <= self.cfg.num_layers]
        if bad:
            raise FlagError(f"--layers {bad} outside 1..{self.cfg.num_layers}")
        _, states = self.encode(trim_padding(history)[0], layer_states=True)
        norm = self.base_lm().norm
        return {l: self.item_scores(norm(states[l - 1].to(norm.weight.dtype)).float()) for l in layers}

    def supervised(self, input_ids, labels, layer_states=False):
        """The states that training supervises, one row per target: {"h": [n, d1] after the final norm,
        "states": every layer's [n, d1] (with layer_states), "labels": [n], "final": [n] bool, True for the
        row read where inference reads (each example's last target)}. labels [B] or [B, L] (see the module)."""
        every = labels.dim() == 2
        if every:
            input_ids, labels = trim_padding(input_ids, labels)
            if self.cfg.readout == "response":  # the marker predicts what the last item's state predicts
                labels = torch.cat([labels, labels[:, -1:]], 1)
        else:
            (input_ids,) = trim_padding(input_ids)
        out = self.encode(input_ids, layer_states, every_position=every)
        h, states = out if layer_states else (out, [])
        if not every:
            return {"h": h, "states": states, "labels": labels, "final": torch.ones_like(labels, dtype=torch.bool)}
        rows = labels != 0
        final = torch.zeros_like(rows)
        final[:, -1] = True
        return {"h": h[rows], "states": [s[rows] for s in states], "labels": labels[rows], "final": final[rows]}

    def forward(self, input_ids, labels, layer_states=False):
        """{"loss"}; with layer_states also the supervised rows' final states "h", "labels", "final" flags and
        every layer's "states". Distillation goes through here, so DDP sees every use."""
        sup = self.supervised(input_ids, labels, layer_states)
        out = {"loss": self.item_loss(sup["h"], sup["labels"])}
        if layer_states:
            out.update(sup)
        return out

    def item_loss(self, h, labels, head=None):
        """The cross-entropy over all items (paper eq. 1) of states h [n, d1] projected by a head (default W_out),
        labels 1..|I|, without the [n, |I|] scores (losses.frozen_item_loss)."""
        q = (head or self.w_out)(h)
        return frozen_item_loss(q, self.item_table(q.dtype), labels - 1)

    def multi_supervision_loss(self, states, labels):
        """L_ms = 1/(B-1) sum_{k<B} CE(y, W_a^(k) h_s^(kn) E^T) (eq. 5): the item loss of each adapter head on the
        states [n, d1] of its layer (states: every layer's, as forward returns them)."""
        return torch.stack(
            [self.item_loss(states[l - 1], labels, head) for l, head in zip(self.cfg.adapter_layers, self.adapters)]
        ).mean()

    def item_table(self, dtype):
        """The item table without its padding row, in the dtype the item loss computes in: cast once, not at every
        loss as autocast would (a buffer is never in autocast's cache), and again only when the buffer changes."""
        e = self.item_embedding
        key = (e.data_ptr(), e._version, dtype)
        if self._table_key != key:
            self._table, self._table_key = e[1:].to(dtype).contiguous(), key
        return self._table

    def checkpoint_config(self):
        return {"model_type": "ellmrec", **dataclasses.asdict(self.cfg)}

    # ------------------------------------------------------------------ inference and training speed

    def base_lm(self):
        """The LM itself, with LoRA layers in it or merged into it (merge_lora)."""
        return self.lm.get_base_model() if isinstance(self.lm, PeftModel) else self.lm

    def cast_frozen(self, dtype):
        """Hold the frozen linear weights of the decoder layers in the compute dtype. Autocast would cast them
        to it at every call anyway (it caches casts only of weights that train), so scores and gradients stay
        the same and the per-call casts, a full read of the layers' weights per forward, go away. Embeddings and
        norms keep their dtype, so the residual stream does too."""
        if dtype is None:
            return self
        for layer in decoder_layers(self.base_lm()):
            for module in layer.modules():
                if isinstance(module, nn.Linear) and not module.weight.requires_grad:
                    module.weight.data = module.weight.data.to(dtype)
        return self

    def merge_lora(self):
        """Fold LoRA into the base weights for inference (peft's merge_and_unload): one matmul per projection
        instead of three. The model cannot be trained further afterwards."""
        if isinstance(self.lm, PeftModel):
            self.lm = self.lm.merge_and_unload()
        return self


def training_attention(attention, precision=None) -> str:
    """ELLMRecConfig.attention with auto resolved for a run computing in `precision` (None: fp32): on a CPU in
    bf16 or fp16, the faster of eager and SDPA for a training step's attention, measured once per CPU (torch's
    CPU flash-attention backward is the slower on some CPUs in bf16, benchmarks/README.md, "Training speed");
    SDPA elsewhere."""
    if attention != "auto":
        return attention
    dtype = None if precision is None else compute_dtype(precision)
    if dtype is None or torch.cuda.is_available():
        return "sdpa"
    speedup = cpu_measurement(f"eager_over_sdpa_{dtype}".replace("torch.", ""), lambda: _eager_speedup(dtype))
    return "eager" if speedup is None or speedup > 1 else "sdpa"


def _eager_speedup(dtype, reps=10) -> float:
    """SDPA's time over eager attention's for the forward and backward of a packed step's per-row attention
    (16 rows of 32 tokens after a 26-token instruction, SmolLM2's 9 query and 3 key-value heads of 64)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(16, 9, 32, 64, generator=g).to(dtype).requires_grad_()
    k, v = (torch.randn(16, 3, 58, 64, generator=g).to(dtype).requires_grad_() for _ in range(2))
    mask = torch.ones(32, 58, dtype=torch.bool).tril(26)
    additive = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)

    def eager():
        w = q @ k.repeat_interleave(3, 1).transpose(2, 3) * 0.125 + additive
        return torch.softmax(w, -1, dtype=torch.float32).to(dtype) @ v.repeat_interleave(3, 1)

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.125, enable_gqa=True)

    times = {}
    for name, fn in (("eager", eager), ("sdpa", sdpa)):
        for i in range(reps + 2):
            if i == 2:
                t = time.perf_counter()
            fn().sum().backward()
        times[name] = time.perf_counter() - t
    return times["sdpa"] / times["eager"]


def _with_lora(lm, lora, targets):
    """peft's LoRA on the named projections; names that match no module are a flag error listing the names
    there are (peft would raise deep inside, or adapt nothing)."""
    names = sorted({n.rsplit(".", 1)[-1] for n, m in decoder_layers(lm)[0].named_modules() if isinstance(m, nn.Linear)})
    unknown = [t for t in targets if t not in names]
    if unknown or not targets:
        raise FlagError(
            f"--lora_targets {','.join(targets) or '(none)'}: {', '.join(unknown) or 'nothing given'} "
            f"matches no projection of the LM's layers; they are {', '.join(names)}"
        )
    return get_peft_model(lm, lora)


def check_same_data(cfg: ELLMRecConfig, data, where):
    if cfg.data_fingerprint != data.fingerprint or cfg.num_items != data.num_items:
        raise CheckpointError(
            f"{where} was trained on dataset {cfg.data_fingerprint} ({cfg.num_items} items), "
            f"but {data.path} is {data.fingerprint} ({data.num_items} items)"
        )


def load_ellmrec(checkpoint_dir, data=None, backbone=None, precision=None) -> ELLMRec:
    """Rebuild a trained model from its checkpoint alone (the base LM is reloaded from the source it names);
    precision: as ELLMRec's."""
    cfg, state = load_checkpoint_files(checkpoint_dir, "ellmrec")
    cfg = ELLMRecConfig(**cfg)
    if data is not None:
        check_same_data(cfg, data, checkpoint_dir)
    model = ELLMRec(cfg, state["item_embedding"], backbone, precision)
    load_trained_weights(model, state, checkpoint_dir)
    return model.eval()
