"""Using a trained model: scores and top-k items for histories, and the fast scoring path of E-LLMRec.

The fast path (FastELLMRec) computes what ELLMRec.score computes, laid out for inference:
  - the prompt starts with the instruction and attention is causal, so the instruction's keys and values do
    not depend on the user: they are computed once and every batch attends to them (a prefix KV cache);
  - each row is [instruction (cached)] [items] ([response]) [padding]: padding comes last, where causal
    attention keeps every real token from seeing it, so no attention mask is needed, and position ids are
    those of training (the instruction from 0, the items after it);
  - LoRA merged into the base weights, the LM held in the compute dtype (bf16 where the hardware has it:
    no per-call weight casts, a bf16 residual stream), torch.inference_mode;
  - the LM pass through the project's LLaMA forward (slmrec/decoder.py) where the LM is LLaMA-shaped, else
    transformers' own (TransformersForward); optionally compiled with torch.compile (InferenceConfig.compile);
  - on a CPU, a batch run in blocks of about InferenceConfig.token_block tokens, so each layer's
    intermediates stay in cache;
  - optionally int8 weights (torch's dynamic quantisation, CPU) with fp32 activations.
Batches are grouped by history length by Recommender and metrics.evaluate(by_length=True), so little is spent
on padding. Each option can be switched off, so benchmarks/inference_speed.py measures them one by one.
"""

import contextlib
import dataclasses
import inspect
import logging
import time
from pathlib import Path

import torch
from torch import nn

from .backbone import decoder_layers
from .decoder import Decoder, supports
from .errors import DataError
from .model import check_same_data, load_ellmrec
from .packing import attention_name
from .seqrec import load_seqrec
from .checkpoints import MODEL_CONFIG, CheckpointError, read_model_config
from .precision import compute_dtype, resolve_precision
from .errors import FlagError
from .export import is_export, load_export
from .machine import can_compile, compute_device

log = logging.getLogger(__name__)


@dataclasses.dataclass
class InferenceConfig:
    precision: str = "auto"  # auto (bf16 where the hardware has it, as in training), fp32, bf16, fp16
    fast: bool = (
        True  # E-LLMRec: the prefix-cached path below; False: ELLMRec.score, the reference it is tested against
    )
    merge_lora: bool = True
    # compute: the whole LM (embeddings, norms, so the residual stream) in the compute dtype, as on a GPU;
    # fp32: training's fp32 residual stream, bf16 matmuls over frozen weights held in bf16 (autocast). In bf16
    # neither is bit for bit training's path (merged LoRA rounds differently): measured, see benchmarks.
    residual: str = "compute"
    int8: bool = False  # dynamic int8 linear weights (CPU only), fp32 activations; implies precision fp32
    # transformers' forward only (decoder False or not LLaMA-shaped): sdpa (torch's kernel), eager, or keep: the
    # model's own (validation during training, which must leave the model as it trains). Which is faster depends
    # on the CPU (benchmarks/README.md, "Inference speed")
    attention: str = "sdpa"
    # the project's inference-only LLaMA forward (slmrec/decoder.py: fused projections, only the read row through
    # the last layer) where the LM is LLaMA-shaped; False: transformers' forward (any decoder)
    decoder: bool = True
    # torch.compile (inductor) of the LM pass, compiled once when the scorer is built (tens of seconds): worth it
    # for a server or a pass over many users, not for one recommendation. None: serve.py compiles, and so do
    # evaluate.py and validation during training where auto_compile says it pays
    compile: bool | None = None
    batch_size: int = 128  # on the CPU, 128 scored more users/s than 64, 256 or 512 (benchmarks/README.md)
    # On a CPU the fast path runs a batch in blocks of about this many tokens (rows of whole histories): a
    # layer's intermediates for 1,024 tokens (6 MB for SmolLM2's MLP in bf16) stay in cache between the
    # passes, where a batch of 128 long histories sends them through memory; the products run as fast at that
    # size (benchmarks/README.md, "Inference speed"). 0: whole batches
    token_block: int = 1024
    by_length: bool = True  # batch histories of similar length together

    def __post_init__(self):  # flags are checked when the config is made, before any work
        resolve_precision(self.precision)
        if self.residual not in ("compute", "fp32") or self.attention not in ("eager", "sdpa", "keep"):
            raise FlagError(
                f"--residual must be compute or fp32 (not {self.residual!r}), --attention eager, sdpa or "
                f"keep (not {self.attention!r})"
            )
        if self.batch_size < 1 or self.token_block < 0:
            raise FlagError(
                f"--batch_size must be at least 1 (not {self.batch_size}) and --token_block at least 0 "
                f"(not {self.token_block})"
            )


def autocast(device, dtype):
    return torch.autocast(device, dtype=dtype) if dtype is not None else contextlib.nullcontext()


# Compiling saves a fraction of a millisecond per user in bf16 on a CPU and nothing measurable in fp32, so its
# start-up pays only over a pass of this many users or more (benchmarks/README.md, "Inference speed").
COMPILE_MIN_USERS = 100_000


def auto_compile(cfg: InferenceConfig, users: int, device) -> InferenceConfig:
    """cfg with --compile's default resolved for a pass over `users` histories: compiled on a CPU in bf16 from
    COMPILE_MIN_USERS on, where inductor can build (can_compile); a --compile given is kept."""
    if cfg.compile is not None:
        return cfg
    on = torch.device(device).type == "cpu" and compute_dtype(cfg.precision) == torch.bfloat16
    return dataclasses.replace(cfg, compile=on and users >= COMPILE_MIN_USERS and can_compile(device))


def take_columns(x, index):
    """x [B, T, d] rearranged along T: row b's column j is x[b, index[b, j]]. The fast path's prompt layout
    (padding last, after a cached instruction) is built with it."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


class FastELLMRec:
    """Scores [B, items + 1] of a trained ELLMRec for left-padded histories [B, L], as ELLMRec.score gives
    them (tests/test_inference.py checks it), with the optimisations of the module docstring. Takes over the
    model: LoRA is merged into it and its frozen weights change dtype."""

    def __init__(self, model, cfg: InferenceConfig, device="cpu"):
        self.model, self.device = model.eval(), device
        self.dtype = compute_dtype("fp32" if cfg.int8 else cfg.precision)
        self.token_block = cfg.token_block if torch.device(device).type == "cpu" else 0  # a GPU wants whole batches
        if cfg.merge_lora or cfg.int8:
            model.merge_lora()
        if cfg.int8:
            if device != "cpu":
                raise FlagError("--int8: dynamic int8 quantisation runs on the CPU only")
            for layer in decoder_layers(model.base_lm()):
                torch.ao.quantization.quantize_dynamic(layer, {nn.Linear}, dtype=torch.qint8, inplace=True)
        elif cfg.residual == "compute" and self.dtype is not None:
            model.base_lm().to(self.dtype)
        else:
            model.cast_frozen(self.dtype)
        if cfg.attention != "keep":  # the packed wrapper (model.encode's) is that attention for a padded batch
            model.base_lm().set_attn_implementation(attention_name(cfg.attention))
        table = model.lm.get_input_embeddings()
        with torch.inference_mode(), autocast(device, self.dtype):
            prefix = table(model.prefix_ids)
            self.suffix = table(model.suffix_ids) if model.cfg.readout == "response" else prefix[:0]
            max_len = model.cfg.max_len + self.suffix.shape[0]
            own = cfg.decoder and not cfg.int8 and supports(model.base_lm())
            self.forward = (Decoder if own else TransformersForward)(model.base_lm(), prefix, max_len)
        self.compiled = bool(cfg.compile)
        if self.compiled and not can_compile(device):
            need = "a C++ compiler (g++ or clang++)" if torch.device(device).type == "cpu" else "Triton"
            raise FlagError(f"--compile true: torch.compile needs {need} here; install it or pass --compile false")
        if self.compiled:
            t = time.perf_counter()
            self.forward = torch.compile(self.forward, dynamic=True)
            # one graph for every batch and length: see __call__
            self(torch.ones(3, 2, dtype=torch.long, device=device))
            log.info("scoring path compiled in %.1f s (torch.compile, inductor)", time.perf_counter() - t)

    @torch.inference_mode()
    def __call__(self, history):
        lengths = (history != 0).sum(1)
        if int(lengths.min()) == 0:
            raise DataError("an empty history cannot be scored")
        B, L, S = history.shape[0], int(lengths.max()), self.suffix.shape[0]
        rows = max(2, self.token_block // (L + S)) if self.token_block else B
        if B > rows:
            return torch.cat([self(history[i : i + rows]) for i in range(0, B, rows)])
        if self.compiled and B == 1:
            # A compiled graph specialises a size of 1: one history is scored as two (at batch 1 the weights'
            # reads, not the rows, set the time), so every batch runs the one graph compiled at start-up.
            return self(history.expand(2, -1))[:1]
        return self.scores(history[:, -L:])

    def scores(self, history):
        """The scores of left-padded histories [B, L], none of them empty: the computation itself, with no
        shape read from the data (so it traces whole: export.py's ONNX graph is this method)."""
        m = self.model
        B, L, S = history.shape[0], history.shape[1], self.suffix.shape[0]
        lengths = (history != 0).sum(1)
        with autocast(self.device, self.dtype):
            items = m.w_in(m.item_embedding[history]).to(self.suffix.dtype)
            pad = 1 if self.compiled and L + S == 1 else 0  # never a length of 1 either; padding goes last
            source = torch.cat([items, self.suffix.expand(B, -1, -1), items[:, :pad]], 1)
            # Row b wanted: its n_b items (source columns L - n_b .. L-1), the response, then padding (any column).
            n = lengths[:, None]
            j = torch.arange(L + S + pad, device=history.device)[None]
            index = torch.where(j < n, L - n + j, torch.where(j < n + S, j - n + L, 0))
            h = self.forward(take_columns(source, index), lengths + S - 1)
            return m.item_scores(h.float())


def cache_kwarg(lm):
    """transformers renamed forward's past_key_values to cache (5.x); the name this version takes."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


class TransformersForward:
    """FastELLMRec's LM pass through transformers' own forward (any decoder the backbone loads): the prefix's keys
    and values cached once, x [B, T, d] at positions P.. after it, the final-norm state at column read[b]."""

    def __init__(self, lm, prefix_embeds, max_len):
        self.lm, self.P = lm, prefix_embeds.shape[0]
        out = lm(inputs_embeds=prefix_embeds[None], use_cache=True)
        self.prefix_kv = [(layer.keys, layer.values) for layer in out.to_tuple()[1].layers]

    def __call__(self, x, read):
        from transformers import DynamicCache

        B, T, _ = x.shape
        cache = DynamicCache([(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in self.prefix_kv])
        positions = torch.arange(self.P, self.P + T, device=x.device)[None].expand(B, -1)
        out = self.lm(inputs_embeds=x, position_ids=positions, use_cache=True, **{cache_kwarg(self.lm): cache})
        return out.last_hidden_state[torch.arange(B, device=x.device), read]


class PlainScorer:
    """model.score under the precision's autocast: the reference path (evaluate.py --fast false)."""

    def __init__(self, model, cfg: InferenceConfig, device="cpu"):
        self.model, self.device = model.eval(), device
        self.dtype = compute_dtype(cfg.precision)

    @torch.inference_mode()
    def __call__(self, history):
        with autocast(self.device, self.dtype):
            return self.model.score(history).float()


def load_scorer(checkpoint, data, cfg: InferenceConfig = None, device=None):
    """(scorer, max_len) for a trained run directory: an E-LLMRec teacher or student (finetune.py, distill.py)
    or a SASRec/GRU4Rec/BERT4Rec (train_sr_trad.py), or a folder of export.py; checked against the prepared
    dataset (or an exported folder's own Catalog) before any work."""
    cfg = cfg or InferenceConfig()
    device = device or compute_device()
    if is_export(checkpoint):  # a folder of export.py: the model alone
        model = load_export(checkpoint)
        check_same_data(model.cfg, data, checkpoint)
        return (FastELLMRec if cfg.fast else PlainScorer)(model.to(device), cfg, device), model.cfg.max_len
    path = Path(checkpoint) / MODEL_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{checkpoint}: not a trained model of this project (no {MODEL_CONFIG})")
    kind = read_model_config(checkpoint).get("model_type")
    if kind == "ellmrec":
        model = load_ellmrec(checkpoint, data).to(device)
        return (FastELLMRec if cfg.fast else PlainScorer)(model, cfg, device), model.cfg.max_len
    if kind == "seqrec":
        model = load_seqrec(checkpoint).to(device)
        check_same_data(model.cfg, data, checkpoint)
        # These small models train and evaluate in fp32 (train_sr_trad.py).
        return PlainScorer(model, InferenceConfig(precision="fp32"), device), model.cfg.max_len
    raise CheckpointError(f"{checkpoint}: unknown model type {kind!r} in {MODEL_CONFIG}")
