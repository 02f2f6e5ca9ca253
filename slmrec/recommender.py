"""What recommend.py and the HTTP service share: a request read and checked once (original ids to item indices,
k, keep_seen), a trained model's top-k items for checked requests, and the rows both answer with."""

import dataclasses
from pathlib import Path

import numpy as np
import torch

from .batches import history_batches
from .data import Catalog, PreparedData
from . import export
from .checkpoints import load_checkpoint_config
from .errors import CheckpointError, DataError, FlagError
from .files import load_json
from .inference import InferenceConfig, load_scorer


class UnknownUser(DataError):
    pass


@dataclasses.dataclass
class Request:
    """One request, checked against the dataset by read_request: item indices (1..num_items, oldest first), how
    many items to return, whether items of the history may come back, and the user echoed back (None: a bare
    history)."""

    items: list
    k: int = 10
    keep_seen: bool = False
    user: str | None = None


def _is_id(x) -> bool:
    # Ids are strings; JSON integers are taken as their digits. A boolean or a float is never an id.
    return isinstance(x, str) or (isinstance(x, int) and not isinstance(x, bool))


def read_request(data: PreparedData, obj, where, k=10, keep_seen=False, max_history=None) -> Request:
    """A request as recommend.py's --input lines and the HTTP API give it: {"history": [original item ids]}
    and/or {"user": id} (with a history, the user is only echoed back; alone, the user's whole stored sequence
    is the history), with "k" and "keep_seen" where given, else the defaults passed. Every value is checked
    here, once: a DataError names `where` and what is wrong (UnknownUser for a user not in the dataset)."""
    if not isinstance(obj, dict) or obj.get("history") is None and obj.get("user") is None:
        raise DataError(f'{where}: give "history" (a list of item ids) or "user"')
    k, keep_seen = obj.get("k", k), obj.get("keep_seen", keep_seen)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= data.num_items:
        raise DataError(f"{where}: k must be an integer in 1..{data.num_items}, not {k!r}")
    if not isinstance(keep_seen, bool):
        raise DataError(f"{where}: keep_seen must be true or false, not {keep_seen!r}")
    user = obj.get("user")
    if user is not None and not _is_id(user):
        raise DataError(f"{where}: a user id is a string, not {user!r}")
    user = None if user is None else str(user)
    history = obj.get("history")
    if history is None:
        return Request(user_history(data, user, where), k, keep_seen, user)
    if not isinstance(history, list) or not all(map(_is_id, history)):
        raise DataError(f'{where}: "history" must be a list of item ids (strings)')
    if max_history is not None and len(history) > max_history:
        raise DataError(f"{where}: history of {len(history)} items, more than {max_history}")
    return Request(parse_history(data, [str(i) for i in history], where), k, keep_seen, user)


def parse_history(data: PreparedData, ids, where) -> list:
    """Original item ids (oldest first) -> item indices; an unknown id or an empty history is an error naming
    where it came from."""
    unknown = [i for i in ids if i not in data.item_index]
    if unknown:
        raise DataError(f"{where}: item id(s) {unknown[:5]} not in {data.path / 'items.tsv'}")
    if not ids:
        raise DataError(f"{where}: empty history; at least one item is needed")
    return [data.item_index[i] for i in ids]


def user_history(data: PreparedData, user, where) -> list:
    """A dataset user's whole stored sequence, as item indices."""
    if str(user) not in data.user_index:
        raise UnknownUser(f"{where}: user {user!r} not in {data.path / 'users.tsv'}")
    return [int(x) for x in data.sequences[data.user_index[str(user)]]]


def answer_row(data: PreparedData, request: Request, top) -> dict:
    """The answer to one request, as recommend.py writes it and the HTTP API returns it: {"user"?, "items":
    [{"item": original id, "title", "score"}]}."""
    item_ids, titles = data.catalog
    items = [{"item": item_ids[i], "title": titles[i], "score": round(s, 6)} for i, s in top]
    return {**({"user": request.user} if request.user is not None else {}), "items": items}


def model_and_data(checkpoint=None, model=None, data=None) -> tuple:
    """(the folder to load, the items and users it answers with) from recommend.py's and serve.py's flags: a
    training run with its prepared dataset, or a folder of export.py alone (with the prepared dataset only where
    requests name users)."""
    if (checkpoint is None) == (model is None):
        raise FlagError("give --checkpoint (a training run, with --data) or --model (a folder of export.py)")
    if checkpoint is not None and data is None:
        raise FlagError("--checkpoint needs --data: the prepared dataset the run was trained on")
    return checkpoint or model, PreparedData(data) if data else export.catalog(model)


def check_model(source, data):
    """What loading `source` would refuse, found without loading it (serve.py checks this before it starts any
    worker, which would otherwise fail one by one and be restarted): a folder that is no trained model of this
    project, or one trained on another dataset."""
    if export.is_export(source):
        fingerprint = load_json(Path(source) / export.CONFIG)["model"].get("data_fingerprint")
    else:
        fingerprint = load_checkpoint_config(source).get("data_fingerprint")
    if fingerprint and fingerprint != data.fingerprint:
        raise CheckpointError(f"{source} was trained on dataset {fingerprint}, but {data.path} is {data.fingerprint}")


class Recommender:
    """Top-k items for item histories from a trained model.

        rec = Recommender.from_checkpoint("out/main/student", "data/ml-100k")
        rec.recommend([[12, 7, 301]], k=10)          # [[(item index, score), ...]]
    Histories are item indices (1..num_items, oldest first); read_request turns original ids into them
    (PreparedData.item_index), and answer_row turns the result back into ids and titles."""

    def __init__(self, scorer, data, max_len, cfg: InferenceConfig):
        self.scorer, self.data, self.max_len, self.cfg = scorer, data, max_len, cfg

    @classmethod
    def from_pretrained(cls, folder, data=None, cfg: InferenceConfig = None, device=None):
        """A folder of export.py, alone: its item ids and titles from the folder, no base LM, no project cache.
        data: the prepared dataset it was trained on, only where requests name users (their histories)."""
        if data is not None and not isinstance(data, PreparedData):
            data = PreparedData(data)
        return cls.from_checkpoint(folder, data or export.catalog(folder), cfg, device)

    @classmethod
    def from_checkpoint(cls, checkpoint, data, cfg: InferenceConfig = None, device=None):
        data = data if isinstance(data, Catalog) else PreparedData(data)
        cfg = cfg or InferenceConfig()
        scorer, max_len = load_scorer(checkpoint, data, cfg, device)
        return cls(scorer, data, max_len, cfg)

    def recommend(self, histories, k=10, keep_seen=False, progress=None):
        """[[(item index, score), ...] best first] per history: the top k of all items, items already in the
        history left out unless keep_seen. progress: a callable given each batch's size (e.g. tqdm.update).
        The library's entry: histories of item indices, checked here (an index out of range would read another
        item's row); recommend.py and the server read and check requests with read_request and call answer."""
        for i, h in enumerate(histories):
            if len(h) == 0 or not all(1 <= int(x) <= self.data.num_items for x in h):
                raise DataError(f"history {i}: empty, or item indices outside 1..{self.data.num_items}")
        if not isinstance(k, int) or not 1 <= k <= self.data.num_items:
            raise DataError(f"k must be an integer in 1..{self.data.num_items}, not {k!r}")
        return self.answer([Request(list(h), k, keep_seen) for h in histories], progress)

    @torch.inference_mode()
    def answer(self, requests: list[Request], progress=None) -> list:
        """recommend() for requests read_request has checked, each with its own k and keep_seen (the server's
        batches mix them)."""
        histories = [r.items for r in requests]
        ks, keep = [r.k for r in requests], [r.keep_seen for r in requests]
        out = [None] * len(requests)
        for idx, padded in history_batches(histories, self.max_len, self.cfg.batch_size, self.cfg.by_length):
            scores = self.scorer(torch.from_numpy(padded).to(self.scorer.device)).float()
            scores[:, 0] = float("-inf")
            # A NaN score would sort first: never recommend an item the model cannot score.
            scores = scores.masked_fill(scores.isnan(), float("-inf"))
            for r, i in enumerate(idx):
                if not keep[i]:
                    scores[r, torch.as_tensor(np.asarray(histories[i], dtype=np.int64))] = float("-inf")
            top = scores.topk(max(ks[i] for i in idx), dim=1)
            for r, i in enumerate(idx):
                out[i] = [
                    (int(item), float(s))
                    for item, s in zip(top.indices[r, : ks[i]], top.values[r, : ks[i]])
                    if s > float("-inf")
                ]
            if progress:
                progress(len(idx))
        return out
