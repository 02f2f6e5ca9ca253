"""The item-embedding pickle of the original pipeline: {"item_embedding": FloatTensor[num_items + 1, d]}.

Pickles can run code when loaded, so the loader uses a restricted unpickler that admits only the
classes a tensor or array needs to rebuild itself.
"""

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from .errors import EmbeddingFileError
from .files import file_digest, written_whole

_ALLOWED = {
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            # torch's own helper calls torch.load(weights_only=False) on the nested bytes.
            return _storage_from_bytes
        if (
            (module, name) in _ALLOWED
            or (module == "torch" and name.endswith("Storage"))
            or (module.startswith("numpy") and name.startswith("dtype"))
        ):
            return super().find_class(module, name)
        raise EmbeddingFileError(f"refusing to unpickle {module}.{name}: an embedding pickle holds only tensors/arrays")

    def persistent_load(self, pid):  # torch.save-style storages are not expected in a plain pickle
        raise EmbeddingFileError("persistent ids are not allowed in an embedding pickle")


def _storage_from_bytes(b):
    return torch.load(io.BytesIO(b), weights_only=True)


DEFAULT_SASREC = "out/main/sasrec"  # the main job's SASRec run, whose table the embedded-default LM models use


def save_item_embedding(table: torch.Tensor, path, data_fingerprint=""):
    """The original pipeline's pickle, {"item_embedding": FloatTensor}, plus the fingerprint of the dataset the
    table was trained on (an extra key: readers of the original format ignore it)."""
    with written_whole(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump({"item_embedding": table.detach().cpu().float().clone(), "data_fingerprint": data_fingerprint}, fh)


def load_item_embedding(path, num_items=None, data_fingerprint=None) -> torch.Tensor:
    """FloatTensor[num_items + 1, d] from the pickle; checks the shape against the dataset when given, and the
    dataset fingerprint when both the caller and the file have one (a pickle of the original pipeline has none)."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingFileError(f"{path}: no such item-embedding file (make one with extract_emb.py)")
    with open(path, "rb") as fh:
        try:
            obj = _SafeUnpickler(fh).load()
        except (pickle.UnpicklingError, EOFError) as e:
            raise EmbeddingFileError(f"{path}: not a readable pickle ({e})") from e
    if not isinstance(obj, dict) or "item_embedding" not in obj:
        raise EmbeddingFileError(f"{path}: expected a dict with key 'item_embedding'")
    recorded = obj.get("data_fingerprint")
    if data_fingerprint and recorded and recorded != data_fingerprint:
        raise EmbeddingFileError(
            f"{path}: made from dataset {recorded}, but the data is {data_fingerprint}: use the "
            f"embeddings of a SASRec trained on this dataset (extract_emb.py)"
        )
    table = torch.as_tensor(np.asarray(obj["item_embedding"]), dtype=torch.float32)
    if table.dim() != 2:
        raise EmbeddingFileError(f"{path}: item_embedding must be 2-D, got shape {tuple(table.shape)}")
    if num_items is not None and table.shape[0] != num_items + 1:
        raise EmbeddingFileError(
            f"{path}: {table.shape[0]} rows, but the dataset has {num_items} items "
            f"(+1 padding row): embeddings from another dataset?"
        )
    bad = (~torch.isfinite(table)).any(1).nonzero().flatten().tolist()
    if bad:
        raise EmbeddingFileError(
            f"{path}: non-finite values (NaN or inf) in the rows of items {bad[:5]}"
            f"{' ...' if len(bad) > 5 else ''}: export the embeddings from a healthy run"
        )
    return table


def embedding_digest(path) -> str:
    """The table file's digest as checkpoints record it (the first 16 hex digits of its sha256)."""
    return file_digest(path)[:16]
