"""Training examples cut from each user's training part (the items before the validation item).

Two objectives (see slmrec/model.py):
  every_position  WindowDataset: windows of max_len + 1 items, labels at every position, each target once per
                  epoch; what SASRec, GRU4Rec and BERT4Rec train on, and the E-LLMRec default.
  last_target     one (history, next item) pair per example, the paper's unit: every target once per epoch
                  (sampling="target", NextItemDataset) or one random target per user per example
                  (sampling="user", UserTargetDataset: users weigh equally, as they do in the test).
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from .batches import left_pad
from .errors import FlagError

OBJECTIVES = ("every_position", "last_target")
SAMPLINGS = ("target", "user")


@dataclass
class ExampleConfig:
    objective: str = "every_position"
    sampling: str = "target"  # last_target only: target or user
    max_examples_per_user: int | None = None  # last_target with sampling=target: each user's most recent only

    def __post_init__(self):  # flags are checked when the config is made, before any work
        if self.objective not in OBJECTIVES:
            raise FlagError(f"--objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if self.sampling not in SAMPLINGS:
            raise FlagError(f"--sampling must be one of {SAMPLINGS}, not {self.sampling!r}")
        if self.objective == "every_position" and (self.sampling != "target" or self.max_examples_per_user):
            raise FlagError("--sampling and --max_examples_per_user apply to --objective last_target only")


def training_examples(data, max_len, cfg: ExampleConfig) -> Dataset:
    if cfg.objective == "every_position":
        return WindowDataset(data, max_len)
    if cfg.sampling == "user":
        return UserTargetDataset(data, max_len)
    return NextItemDataset(data, max_len, cfg.max_examples_per_user)


def _left_pad(items, max_len):
    return torch.from_numpy(left_pad([items], max_len)[0])


class WindowDataset(Dataset):
    """Each user's training part cut into windows of max_len + 1 items, from the end backwards, so every
    training target is predicted exactly once per epoch; input = window[:-1], labels = window[1:]."""

    def __init__(self, data, max_len):
        self.max_len = max_len
        self.windows = []
        for u in range(data.num_users):
            seq = data.train_part(u)
            for end in range(len(seq), 1, -max_len):
                self.windows.append(seq[max(0, end - max_len - 1) : end])

    def __len__(self):
        return len(self.windows)

    def lengths(self) -> np.ndarray:
        """Each example's real history length (the sampler's length groups)."""
        return np.array([len(w) - 1 for w in self.windows], np.int64)

    def __getitem__(self, i):
        w = self.windows[i]
        return {"input_ids": _left_pad(w[:-1], self.max_len), "labels": _left_pad(w[1:], self.max_len)}


class NextItemDataset(Dataset):
    """One example per next-item target inside each user's training part: (the items before it, the item).
    max_per_user keeps each user's most recent targets only (None = all)."""

    def __init__(self, data, max_len, max_per_user=None):
        self.data, self.max_len = data, max_len
        users, targets = [], []
        for u in range(data.num_users):
            ts = np.arange(1, len(data.train_part(u)))
            if max_per_user:
                ts = ts[-max_per_user:]
            users.append(np.full(len(ts), u, np.int32))
            targets.append(ts.astype(np.int32))
        self.users, self.positions = np.concatenate(users), np.concatenate(targets)

    def __len__(self):
        return len(self.users)

    def lengths(self) -> np.ndarray:
        return np.minimum(self.positions, self.max_len).astype(np.int64)

    def example(self, u, t):
        seq = self.data.train_part(u)
        return {
            "input_ids": _left_pad(seq[max(0, t - self.max_len) : t], self.max_len),
            "labels": torch.tensor(int(seq[t])),
        }

    def __getitem__(self, i):
        return self.example(int(self.users[i]), int(self.positions[i]))


class UserTargetDataset(NextItemDataset):
    """One example per user per epoch, its target drawn uniformly from the user's training targets at every
    access (torch's generator, which the Trainer seeds)."""

    def __init__(self, data, max_len):
        self.data, self.max_len = data, max_len
        self.users = np.array([u for u in range(data.num_users) if len(data.train_part(u)) > 1], np.int32)

    def lengths(self) -> np.ndarray:
        """The longest history a user's draw can give (the drawn one is known only at access)."""
        return np.array([min(len(self.data.train_part(int(u))) - 1, self.max_len) for u in self.users], np.int64)

    def __getitem__(self, i):
        u = int(self.users[i])
        t = int(torch.randint(1, len(self.data.train_part(u)), ()).item())
        return self.example(u, t)


class Indexed(Dataset):
    """The examples with their position in the set ("index"), which a teacher-state cache is keyed by."""

    def __init__(self, examples):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def lengths(self) -> np.ndarray:
        return self.examples.lengths()

    def __getitem__(self, i):
        return {**self.examples[i], "index": torch.tensor(i)}
