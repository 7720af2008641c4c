"""Popularity baseline: every user gets the items ranked by their number of training interactions."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from components.data.histories import Batch, Histories
from components.models.base import Recommender, neg_inf_padding


class Popularity(Recommender):
    name = "popularity"

    def __init__(self, item_ids: list[str], item_mapping_hash: str):
        super().__init__(item_ids, item_mapping_hash)
        self.register_buffer("counts", torch.zeros(self.num_items + 1))  # [N+1], counts[0] = padding

    @classmethod
    def fit(cls, train_items: np.ndarray, item_ids: list[str], item_mapping_hash: str) -> Popularity:
        """Counts of each item idx among the training interactions (flat array of idx)."""
        model = cls(item_ids, item_mapping_hash)
        counts = np.bincount(np.asarray(train_items, dtype=np.int64), minlength=model.num_items + 1)
        model.counts.copy_(torch.from_numpy(counts[: model.num_items + 1]).float())
        model.counts[0] = 0
        return model

    def loss(self, batch: Batch) -> Tensor:
        """Cross-entropy of the targets under the (add-one smoothed) popularity distribution.

        There is nothing to learn by gradient; the value makes the model comparable to others' losses.
        """
        logp = torch.log(self.counts[1:] + 1) - torch.log((self.counts[1:] + 1).sum())  # [N]
        targets = batch.targets[batch.targets != 0]  # [M]
        return -logp[targets - 1].mean()

    def score_all(self, histories: Histories) -> Tensor:
        return neg_inf_padding(self.counts.expand(len(histories), -1).clone())  # [B, N+1]

    def score_candidates(self, histories: Histories, candidates: Tensor) -> Tensor:
        return self.counts[candidates]  # [B, C]

    def config_dict(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any], item_ids: list[str], item_mapping_hash: str) -> Popularity:
        return cls(item_ids, item_mapping_hash)
