"""Left-padded batches of item histories, shared by training, evaluation and serving."""

import numpy as np


def history_batches(histories, max_len, batch_size, by_length=False):
    """(indices into histories, left-padded int64 array [B, max_len]) per batch; with by_length, histories of
    similar length (as scored: at most max_len) share a batch, so little of it is padding."""
    lengths = [min(len(h), max_len) for h in histories]
    order = np.argsort(lengths, kind="stable") if by_length else np.arange(len(histories))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, left_pad([histories[i] for i in idx], max_len)


def left_pad(seqs, length):
    """LongTensor-ready int64 array [len(seqs), length]: the last `length` items, 0-padded on the left."""
    out = np.zeros((len(seqs), length), np.int64)
    for r, s in enumerate(seqs):
        s = s[-length:]
        if len(s):
            out[r, length - len(s) :] = s
    return out


def trim_padding(history, *aligned):
    """Drop the columns that are padding in every row of a left-padded batch (and the same columns of the
    aligned tensors): a batch costs its own longest history, not max_len. The models' position ids are
    counted from the right end (SASRec) or from the mask (E-LLMRec), so the scores agree with the untrimmed
    batch's to rounding."""
    keep = max(int((history != 0).sum(1).max()), 1)
    return (history[:, -keep:], *(a[:, -keep:] for a in aligned))
