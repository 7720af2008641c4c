"""Ranking metrics: pure functions of scores and ranks, tested against hand-computed values.

A rank is 0-based: the number of *other* items that score at least as high as the positive.
Ties count against the positive (pessimistic), so a model that gives every item the same score
ranks the positive last instead of looking good; NaN scores count as the lowest possible score.

- HR@k = 1 if rank < k
- NDCG@k = 1 / log2(rank + 2) if rank < k (one relevant item, so the ideal DCG is 1)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

KS = (10, 20)


def _clean(scores: Tensor) -> Tensor:
    return torch.nan_to_num(scores.float(), nan=-torch.inf)


def candidate_ranks(scores: Tensor) -> Tensor:
    """[B] ranks of column 0 (the positive) among the [B, C] candidate scores."""
    s = _clean(scores)
    return (s[:, 1:] >= s[:, :1]).sum(1)  # [B]


def full_ranks(scores: Tensor, positives: Tensor, exclude_rows: Tensor, exclude_items: Tensor) -> Tensor:
    """[B] ranks of `positives` [B] among the whole catalogue [B, N+1].

    Excluded (row, item) pairs (the user's history) and the padding column never outrank the
    positive; the positive itself is never excluded, even when the user interacted with it before.
    """
    s = _clean(scores)  # [B, N+1]
    rows = torch.arange(len(s))
    pos = s[rows, positives]  # [B]
    # Items that cannot outrank the positive: padding, the user's history, and the positive itself.
    # A mask, not a -inf sentinel, so a model emitting -inf/NaN everywhere still ranks the positive last.
    skip = torch.zeros_like(s, dtype=torch.bool)  # [B, N+1]
    skip[:, 0] = True
    skip[exclude_rows, exclude_items] = True
    skip[rows, positives] = True
    beats = (s >= pos[:, None]) & ~skip  # [B, N+1]
    return beats.sum(1)


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    ranks = np.asarray(ranks)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def hr_at(ranks: np.ndarray, k: int) -> np.ndarray:
    return (np.asarray(ranks) < k).astype(np.float64)


def per_user_metrics(ranks: np.ndarray, ks: tuple[int, ...] = KS, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"{prefix}ndcg@{k}"] = ndcg_at(ranks, k)
        out[f"{prefix}hr@{k}"] = hr_at(ranks, k)
    return out


def summarize(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float | int]:
    """Mean metrics over users: {'ndcg@10', 'hr@10', 'ndcg@20', 'hr@20', 'n_users'}."""
    ranks = np.asarray(ranks)
    out: dict[str, float | int] = {}
    for name, values in per_user_metrics(ranks, ks).items():
        out[name] = round(float(values.mean()), 6) if len(ranks) else 0.0
    out["n_users"] = int(len(ranks))
    return out


def relative_drop(original: dict, shuffled: dict) -> dict[str, float | None]:
    """(original - shuffled) / original per metric: positive when shuffling the history hurts."""
    return {k: (round((original[k] - shuffled[k]) / original[k], 6) if original[k] else None)
            for k in original if k != "n_users" and isinstance(original[k], float)}

