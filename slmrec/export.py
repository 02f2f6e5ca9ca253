"""A trained E-LLMRec run (the student, or a teacher) as one self-contained folder, and that folder loaded back.

The folder holds what scoring reads and nothing else: the kept decoder layers with LoRA folded in, the final
norm, the embeddings of the prompt's own tokens (the instruction, and the response marker where the readout
reads there) in place of the LM's whole token table, W_in, W_out and the item table (the L_ms adapters only
train), in one safetensors file; the item ids and titles (items.tsv, as the prepared dataset has them);
config.json (the decoder's architecture, the prompt, max_len, readout, the dataset's name and fingerprint);
and a README.md model card. It loads with no base LM, no project cache and no prepared dataset, and it is what
a model hub takes as a repository (huggingface_hub's upload_folder; nothing here reaches a network):

    python export.py --run_dir out/main/student --output models/slmrec-student
    rec = Recommender.from_pretrained("models/slmrec-student")

Loaded back it is an ELLMRec like any other, so the fast scoring path, evaluation and serving run on it
unchanged: its LM is the cut LlamaModel rebuilt from config.json, with a token table of the prompt's tokens
only (renumbered 0..V-1), and LoRA's delta zero after the fold.
"""

import json
import os
import shutil
from pathlib import Path

import safetensors.torch
import torch

from .backbone import decoder_layers
from .checkpoints import WEIGHTS, load_checkpoint_config
from .data import Catalog, PreparedData
from .errors import CheckpointError, FlagError
from .files import file_digest, load_json, save_json, written_whole
from .model import ELLMRec, ELLMRecConfig, load_ellmrec

EXPORT_TYPE = "slmrec-export"
EXPORT_FORMAT = 1
CONFIG = "config.json"
ITEMS = "items.tsv"
CARD = "README.md"
FILES = (WEIGHTS, CONFIG, ITEMS, CARD)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# The licenses of the embedded base LMs, for the model card; any other base keeps its own (named there).
BASE_LICENSES = {"smollm2-135m": "Apache-2.0 (SmolLM2-135M-Instruct, Hugging Face)"}


def is_export(folder) -> bool:
    path = Path(folder) / CONFIG
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("model_type") == EXPORT_TYPE
    except (ValueError, AttributeError):
        return False


def catalog(folder) -> Catalog:
    """An exported folder's items (ids and titles), for requests without the prepared dataset."""
    if not is_export(folder):
        raise CheckpointError(f"{folder}: not an exported model (no {CONFIG} of export.py); make one with export.py")
    m = load_json(Path(folder) / CONFIG)["model"]
    return Catalog(folder, m["num_items"], m["data_fingerprint"])


class PromptTokens:
    """The tokenizer an exported model is rebuilt with: it knows only the prompt's two texts, as token ids of the
    exported token table (ELLMRec tokenizes the instruction and the response marker, nothing else)."""

    def __init__(self, texts: dict):
        self.texts = texts  # {text: ids}

    def __call__(self, text, add_special_tokens=True):
        if text not in self.texts:
            raise CheckpointError(f"an exported model knows only its own prompt, not {text!r}")
        return {"input_ids": list(self.texts[text])}


def _lm_state(model: ELLMRec, vocab) -> dict:
    """The cut LM's state dict as a plain LlamaModel of the same config holds it: LoRA folded in (merge_lora) and
    the token table cut to `vocab` (the prompt's token ids, in their new order)."""
    state = {k: v.detach() for k, v in model.merge_lora().base_lm().state_dict().items()}
    state["embed_tokens.weight"] = state["embed_tokens.weight"][torch.as_tensor(vocab)]
    return state


def export(run, output, dtype="fp32", data=None) -> dict:
    """Write the folder for a trained run (finetune.py or distill.py) to `output`, a new or empty folder; the
    weights in `dtype` (fp32 or bf16; the item table and norms too). data: the prepared dataset it was trained
    on, for the item ids and titles (default: the one the run names). Returns config.json's content."""
    if dtype not in DTYPES:
        raise FlagError(f"--dtype must be fp32 or bf16, not {dtype!r}")
    run, output = Path(run), Path(output)
    load_checkpoint_config(run, "ellmrec")  # a run of finetune.py or distill.py, before anything is read
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FlagError(f"--output {output} exists and is not an empty folder: choose a new one")
    dataset = PreparedData(data or load_json(run / "run_config.json")["data"])
    out = output.resolve()
    for r in (run.resolve(), dataset.path.resolve()):
        if out == r or r in out.parents or out in r.parents:
            raise FlagError(f"--output {output} is, holds or lies in {r}, which the export reads: choose another")
    model = load_ellmrec(run, dataset)
    prefix, suffix = model.prefix_ids.tolist(), model.suffix_ids.tolist()
    vocab = list(dict.fromkeys(prefix + suffix))  # the prompt's distinct tokens, renumbered 0..V-1
    new = {t: i for i, t in enumerate(vocab)}
    cast = DTYPES[dtype]
    tensors = {f"lm.{k}": v.to(cast).contiguous() for k, v in _lm_state(model, vocab).items()}
    tensors.update({f"w_in.{k}": v.to(cast) for k, v in model.w_in.state_dict().items()})
    tensors.update({f"w_out.{k}": v.to(cast) for k, v in model.w_out.state_dict().items()})
    tensors["item_embedding"] = model.item_embedding.to(cast)
    arch = model.base_lm().config.to_dict()
    arch.update(vocab_size=len(vocab), pad_token_id=None, bos_token_id=None, eos_token_id=None)
    for key in ("dtype", "torch_dtype", "_name_or_path", "transformers_version"):
        arch.pop(key, None)
    cfg = model.cfg
    metrics = load_json(run / "test_metrics.json") if (run / "test_metrics.json").is_file() else {}
    config = {
        "model_type": EXPORT_TYPE,
        "format": EXPORT_FORMAT,
        "dtype": dtype,
        "model": {
            "num_layers": cfg.num_layers,
            "num_items": cfg.num_items,
            "item_dim": cfg.item_dim,
            "max_len": cfg.max_len,
            "readout": cfg.readout,
            "instruction": cfg.instruction,
            "response": cfg.response,
            "instruction_ids": [new[t] for t in prefix],
            "response_ids": [new[t] for t in suffix],
            "data_fingerprint": cfg.data_fingerprint,
            "embedding_digest": cfg.embedding_digest,
        },
        "decoder": arch,
        "cut_from": {"base_model": cfg.base_model, "layers_kept": cfg.num_layers},
        "data": {
            "name": dataset.path.name,
            "fingerprint": dataset.fingerprint,
            "users": dataset.stats.get("users"),
            "items": dataset.num_items,
        },
        "test_metrics": {k: v for k, v in metrics.items() if not isinstance(v, dict)},
        "source_run": str(run),
    }
    output.mkdir(parents=True, exist_ok=True)
    with written_whole(output / WEIGHTS) as tmp:
        safetensors.torch.save_file(tensors, tmp, metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(output / WEIGHTS, 0o666 & ~umask)  # a published file: readable as the others (safetensors writes 0600)
    shutil.copyfile(dataset.path / ITEMS, output / ITEMS)
    config["weights_sha256"] = file_digest(output / WEIGHTS)
    save_json(config, output / CONFIG)
    with written_whole(output / CARD) as tmp:
        tmp.write_text(model_card(config, output), encoding="utf-8")
    return config


def folder_mb(folder) -> float:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file()) / 1e6


def model_card(config, folder) -> str:
    m, data, cut = config["model"], config["data"], config["cut_from"]
    metrics = config["test_metrics"]
    shown = [k for k in ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR") if k in metrics]
    table = (
        "| "
        + " | ".join(shown)
        + " |\n|"
        + "---|" * len(shown)
        + "\n| "
        + " | ".join(f"{metrics[k]:.4f}" for k in shown)
        + " |"
        if shown
        else "(the run recorded no test metrics)"
    )
    license_ = BASE_LICENSES.get(cut["base_model"], f"the license of {cut['base_model']} (see its own files)")
    arch = config["decoder"]
    return f"""---
library_name: slmrec
tags: [recommendation, sequential-recommendation, slmrec]
---

# SLMRec sequential recommender: {m["num_layers"]} decoder layers of {cut["base_model"]}

A next-item recommender in the SLMRec / E-LLMRec form (ICLR 2025, "SLMRec: Distilling Large Language Models
into Small for Sequential Recommendation"): a user's item history, embedded by a frozen SASRec item table and
projected into a decoder LM's first {m["num_layers"]} layers (hidden size {arch.get("hidden_size")}), read at the
{"last history item" if m["readout"] == "last_item" else "response marker"}, and scored against all
{m["num_items"]:,} items. Trained with this repository's code (run `{config["source_run"]}`), exported with
`export.py` in {config["dtype"]}: {folder_mb(folder):.1f} MB in all.

## Data and test metrics
Dataset `{data["name"]}` (fingerprint `{data["fingerprint"]}`; {data["users"]:,} users, {data["items"]:,} items),
prepared by the paper's protocol: ratings above 3, 5-core, leave-one-out; the test split ranks each user's
last item among 1,000 stored candidates (the item and 999 the user never rated):

{table}

## Use

```python
from slmrec.recommender import Recommender

rec = Recommender.from_pretrained("{Path(folder).name}")
rec.recommend([[12, 7, 301]], k=10)     # item indices 1..{m["num_items"]} (items.tsv), oldest first
```

or `python recommend.py --model {Path(folder).name} --history ID,ID,ID` and `python serve.py --model
{Path(folder).name}` with original item ids (`items.tsv`). A request naming a dataset user needs the prepared
dataset too (`--data`). Histories longer than {m["max_len"]} items are cut to their last {m["max_len"]}.

## Files
`model.safetensors` (the decoder layers with LoRA folded in, the final norm, the prompt's token embeddings,
W_in, W_out, the item table), `config.json` (architecture, prompt, readout, data fingerprint, test metrics),
`items.tsv` (item ids and titles).

## License
The weights were cut from {cut["base_model"]}: {license_}. The item table and heads were trained on
`{data["name"]}`, whose own terms apply.
"""


def load_export(folder, precision=None) -> ELLMRec:
    """An exported folder as an ELLMRec (inference only): the decoder rebuilt from config.json and the weights,
    checked against the digest the export recorded."""
    from transformers import AutoConfig, AutoModel

    folder = Path(folder)
    missing = [f for f in (WEIGHTS, CONFIG, ITEMS) if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(
            f"{folder}: not an exported model (missing {', '.join(missing)}); make one with export.py"
        )
    config = load_json(folder / CONFIG)
    if not isinstance(config, dict) or config.get("model_type") != EXPORT_TYPE:
        raise CheckpointError(f"{folder}/{CONFIG}: not an exported SLMRec model (model_type {EXPORT_TYPE!r})")
    if config.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{folder}: export format {config.get('format')!r}; this code reads {EXPORT_FORMAT}")
    if file_digest(folder / WEIGHTS) != config.get("weights_sha256"):
        raise CheckpointError(f"{folder}/{WEIGHTS}: changed since it was exported (its digest differs); export again")
    try:
        tensors = safetensors.torch.load_file(folder / WEIGHTS)
        m, arch = config["model"], dict(config["decoder"])
        lm_config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    except (KeyError, ValueError, TypeError, OSError) as e:
        raise CheckpointError(f"{folder}: damaged export ({type(e).__name__}: {e})") from None
    dtype = DTYPES[config["dtype"]]
    lm = AutoModel.from_config(lm_config, dtype=dtype)
    result = lm.load_state_dict({k[3:]: v for k, v in tensors.items() if k.startswith("lm.")}, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{folder}: weights do not fit the decoder in config.json ({result.missing_keys[:3]}, "
            f"{result.unexpected_keys[:3]})"
        )
    tokens = PromptTokens({m["instruction"]: m["instruction_ids"], m["response"]: m["response_ids"]})
    cfg = ELLMRecConfig(
        base_model=str(folder),
        num_layers=m["num_layers"],
        max_len=m["max_len"],
        readout=m["readout"],
        instruction=m["instruction"],
        response=m["response"],
        lora_dropout=0.0,
        adapter_layers=[],
        data_fingerprint=m["data_fingerprint"],
        embedding_digest=m["embedding_digest"],
    )
    model = ELLMRec(cfg, tensors["item_embedding"].float(), backbone=(lm, tokens), precision=precision)
    model.merge_lora()  # LoRA's B starts at zero: the fold leaves the exported weights as they are
    model.w_in.load_state_dict({"weight": tensors["w_in.weight"].float(), "bias": tensors["w_in.bias"].float()})
    model.w_out.load_state_dict({"weight": tensors["w_out.weight"].float()})
    if len(decoder_layers(model.base_lm())) != m["num_layers"]:
        raise CheckpointError(f"{folder}: config.json's decoder does not have {m['num_layers']} layers")
    return model.eval()
