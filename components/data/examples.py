"""Training examples cut from the prepared data, for the two trainers (components/models/training.py's loop).

- `TrainingSet`: each user's training sequence as one right-aligned window with the next item at every
  position and negatives sampled from the items the user never interacted with in training. SASRec
  (`pretrain_sasrec`) trains on every position of it.
- `Examples`: (history -> next item) pairs drawn from a `TrainingSet`, one per user or one per position,
  each with its own history window and dates. LLM-SRec (`distill`) trains on them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from components.data.histories import Batch, Histories, shuffle_window
from components.data.sequences import Prepared, flat_offsets, flat_ranges, right_aligned

MAX_RESAMPLE_ROUNDS = 30


class TrainingSet:
    """Each user's training sequence as one right-aligned window: inputs [U, W] and next items [U, W].

    Negatives are drawn uniformly from 1..N and rejected, all at once, when the (user, item) pair
    occurs in the user's training sequence: a sorted array of pair keys makes that one searchsorted.
    """

    def __init__(self, data: Prepared, window: int | None):
        rows = np.arange(len(data.user_idx))
        starts, ends = data.bounds("train", rows)
        lens = ends - starts
        rows, starts, ends, lens = rows[lens >= 2], starts[lens >= 2], ends[lens >= 2], lens[lens >= 2]
        window = int(lens.max()) - 1 if window is None else window
        seq = right_aligned(data.flat_items, starts, ends, window + 1)  # [U, W+1]
        self.inputs = seq[:, :-1]  # [U, W]
        self.targets = np.where(self.inputs != 0, seq[:, 1:], 0)  # [U, W]: the first item is never a target
        self.timestamps = right_aligned(data.flat_ts, starts, ends, window + 1)[:, :-1]  # [U, W]
        self.users = data.user_idx[rows]  # [U]
        self.lengths = np.minimum(lens - 1, window)  # [U] real positions in the window
        self.num_items = data.num_items
        # Keys (set row, item) of every training interaction, for rejection of sampled negatives.
        set_row = np.repeat(np.arange(len(rows)), lens)
        self.seen = np.unique(set_row * (self.num_items + 1) + data.flat_items[flat_ranges(starts, ends)])

    def __len__(self) -> int:
        return len(self.users)

    def sample_negatives(self, set_rows: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """[len(set_rows), *shape] items each user never interacted with in training."""
        neg = rng.integers(1, self.num_items + 1, size=(len(set_rows), *shape))
        row_key = (set_rows * (self.num_items + 1)).reshape(-1, *([1] * len(shape)))
        for _ in range(MAX_RESAMPLE_ROUNDS):
            keys = row_key + neg
            pos = np.minimum(np.searchsorted(self.seen, keys), len(self.seen) - 1)
            hit = self.seen[pos] == keys
            if not hit.any():
                break
            neg[hit] = rng.integers(1, self.num_items + 1, size=int(hit.sum()))
        # A user who interacted with nearly the whole catalogue may keep a few hits: rare, and harmless.
        return neg

    def batches(self, batch_size: int, num_negatives: int, rng: np.random.Generator) -> Iterator[Batch]:
        """One epoch: the users in `rng`'s order, `batch_size` per batch, `num_negatives` per position."""
        order = rng.permutation(len(self))
        for lo in range(0, len(order), batch_size):
            rows = order[lo: lo + batch_size]
            width = int(self.lengths[rows].max())  # trim columns that are padding for the whole batch
            inputs = self.inputs[rows, -width:]  # [B, L]
            negatives = self.sample_negatives(rows, (width, num_negatives), rng)  # [B, L, K]
            yield Batch(Histories(torch.from_numpy(inputs), torch.from_numpy(self.timestamps[rows, -width:]),
                                  torch.from_numpy(self.users[rows])),
                        targets=torch.from_numpy(self.targets[rows, -width:]),
                        negatives=torch.from_numpy(negatives))


class Examples:
    """Training examples (history -> next item) from each user's training sequence.

    `targets="last"` (the paper): one per user, the history is the training sequence without its last
    item and the target that item. `targets="all"`: one per position, each with its own history window
    (the `window` most recent items before it, dates included); positions older than the window that
    `TrainingSet` keeps are not used.
    """

    def __init__(self, prepared: Prepared, window: int, seed: int, targets: str = "last", history_len: int = 10):
        self.history_len = history_len  # the prompt's window: what `shuffle` permutes
        self.set = TrainingSet(prepared, window)
        self.rng = np.random.default_rng(seed)
        W = self.set.inputs.shape[1]
        if targets == "last":
            self.rows, self.pos = np.arange(len(self.set)), np.full(len(self.set), W - 1)
        else:
            self.rows = np.repeat(np.arange(len(self.set)), self.set.lengths)
            self.pos = W - 1 - flat_offsets(self.set.lengths)  # every real input position of each row

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, examples: np.ndarray, num_negatives: int, shuffle: bool, rng: np.random.Generator | None = None):
        """A `Batch` for example indices [B]: right-aligned histories, targets [B, 1], negatives [B, 1, K].

        Negatives and the shuffle draw from `rng` (default: the set's own generator)."""
        rng = self.rng if rng is None else rng
        s = self.set
        rows, pos = self.rows[examples], self.pos[examples]
        W = s.inputs.shape[1]
        src = np.arange(W)[None] - (W - 1 - pos)[:, None]  # [B, W]: column of the row's window at each slot
        ok = src >= 0
        src = np.where(ok, src, 0)
        items = np.where(ok, np.take_along_axis(s.inputs[rows], src, 1), 0)  # [B, W]
        ts = np.where(ok, np.take_along_axis(s.timestamps[rows], src, 1), 0)  # [B, W]
        width = int((items != 0).sum(1).max())
        items, ts = torch.from_numpy(items[:, -width:]), torch.from_numpy(ts[:, -width:])  # [B, L]
        target = torch.from_numpy(s.targets[rows, pos][:, None])  # [B, 1] the item that followed
        if shuffle:  # items move, dates and "Item No." stay: the paper's shuffled training
            # Only the prompt's window moves, as in the shuffled evaluation: the LLM sees the same items, reordered.
            k = min(self.history_len, items.shape[1])
            items = items.clone()
            items[:, -k:] = shuffle_window(items[:, -k:], None, torch.Generator().manual_seed(int(rng.integers(2**31))))
        neg = s.sample_negatives(rows, (1, num_negatives), rng)  # [B, 1, K]
        return Batch(Histories(items, ts, torch.from_numpy(s.users[rows])), targets=target,
                     negatives=torch.from_numpy(neg))

    def batches(self, batch_size: int, num_negatives: int, shuffle: bool, rng: np.random.Generator):
        """One epoch: the examples in `rng`'s order, `batch_size` per step. Several training processes each
        draw every whole batch from the same `rng` and split the model's work (components/models/parallel.py)."""
        order = rng.permutation(len(self))
        for lo in range(0, len(order), batch_size):
            yield self.batch(order[lo: lo + batch_size], num_negatives, shuffle, rng)
