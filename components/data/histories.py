"""What every model reads: users' histories, and in training, batches of them with targets and negatives.

`Histories` is the input of the one recommender interface (components/models/base.py):

- `items` [B, L] int64 item idx, **right-aligned**: the last column is the most recent item and
  shorter histories are left-padded with 0. A model that reads fewer items than L (SASRec's
  `max_len`, LLM-SRec's last 10) keeps the last columns, so callers may pass any L.
- `timestamps` [B, L] int64 Unix seconds aligned with `items` (0 at padding), for models that put
  dates in a prompt. Titles are not carried: a model that needs them owns its item table.
- `users` [B] int64 user idx.

They are data, not model code: the prepared data cuts them (sequences.py), training examples batch them
(examples.py), the evaluator and the service feed them to any model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Histories:
    items: Tensor  # [B, L] item idx, right-aligned, 0 = padding
    timestamps: Tensor  # [B, L] Unix seconds, 0 = padding
    users: Tensor  # [B] user idx

    def __len__(self) -> int:
        return self.items.shape[0]

    def last(self, n: int | None) -> Histories:
        """The `n` most recent columns (all when n is None or L <= n)."""
        if n is None or self.items.shape[1] <= n:
            return self
        return Histories(self.items[:, -n:], self.timestamps[:, -n:], self.users)


@dataclass
class Batch:
    """One training batch: for every history position, the item that came next and sampled negatives."""

    histories: Histories
    targets: Tensor  # [B, L] item that followed each position, 0 = no target (padding)
    negatives: Tensor  # [B, L, K] items the user never interacted with in training (K = model.num_negatives)


def shuffle_window(items: Tensor, window: int | None, generator: torch.Generator) -> Tensor:
    """Permute, per row, the order of the real items among the last `window` columns of [B, L] histories.

    Padding stays on the left and items older than the window stay where they are, so the model
    sees the same items in a different order. Timestamps are deliberately not permuted with them:
    the sequence of dates stays chronological, only which item sits at which date changes.
    """
    B, L = items.shape
    w = L if window is None else min(window, L)
    head, tail = items[:, : L - w], items[:, L - w:]  # [B, L-w], [B, w]
    keys = torch.rand(B, w, generator=generator)  # [B, w]
    keys[tail == 0] = -1.0  # padding sorts first, so it stays on the left
    order = keys.argsort(dim=1)  # [B, w]
    return torch.cat([head, tail.gather(1, order)], dim=1)  # [B, L]
