"""Ranking metrics against hand-computed values, ties and NaN included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.data.histories import shuffle_window
from components.evaluation.metrics import (
    candidate_ranks,
    full_ranks,
    hr_at,
    ndcg_at,
    relative_drop,
    summarize,
)


def test_ndcg_and_hr_from_ranks_by_hand():
    ranks = np.array([0, 1, 9, 10, 25])
    assert ndcg_at(ranks, 10) == pytest.approx([1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0, 0.0])
    assert hr_at(ranks, 10).tolist() == [1, 1, 1, 0, 0]
    assert ndcg_at(ranks, 20) == pytest.approx([1.0, 0.63092975, 0.28906483, 0.27894295, 0.0])
    assert hr_at(ranks, 20).tolist() == [1, 1, 1, 1, 0]
    s = summarize(ranks)
    assert s["n_users"] == 5
    assert s["ndcg@10"] == pytest.approx((1 + 0.63092975 + 0.28906483) / 5, abs=1e-6)
    assert s["hr@10"] == pytest.approx(0.6) and s["hr@20"] == pytest.approx(0.8)
    assert list(s) == ["ndcg@10", "hr@10", "ndcg@20", "hr@20", "n_users"]


def test_candidate_ranks_count_ties_against_the_positive():
    scores = torch.tensor([
        [5.0, 1.0, 2.0, 3.0],  # best: rank 0
        [5.0, 5.0, 1.0, 1.0],  # one tie: rank 1, not 0
        [2.0, 3.0, 2.0, 4.0],  # two higher, one tie: rank 3
        [1.0, 1.0, 1.0, 1.0],  # constant scores: last
    ])
    assert candidate_ranks(scores).tolist() == [0, 1, 3, 3]


def test_constant_scores_do_not_look_good_on_100_candidates():
    ranks = candidate_ranks(torch.zeros(7, 100)).numpy()
    assert (ranks == 99).all()
    s = summarize(ranks)
    assert s["ndcg@10"] == 0.0 and s["hr@20"] == 0.0


def test_nan_scores_rank_lowest():
    scores = torch.tensor([[float("nan"), 0.1, -5.0], [1.0, float("nan"), 0.5], [float("nan")] * 3])
    assert candidate_ranks(scores).tolist() == [2, 0, 2]


def test_full_ranks_exclude_history_but_never_the_positive():
    # catalogue of 5 items (column 0 is padding); scores descending with the item idx
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7, 0.6, 0.5]] * 3)
    positives = torch.tensor([3, 3, 4])
    # row 0: history {1} -> only item 2 beats item 3; row 1: no history -> items 1, 2 beat it;
    # row 2: history {4, 1} contains the positive itself, which still counts: items 2, 3 beat it
    ex_rows = torch.tensor([0, 2, 2])
    ex_items = torch.tensor([1, 4, 1])
    assert full_ranks(scores, positives, ex_rows, ex_items).tolist() == [1, 2, 2]


def test_full_ranks_pessimistic_for_degenerate_models():
    scores = torch.full((2, 6), float("nan"))
    ranks = full_ranks(scores, torch.tensor([2, 5]), torch.tensor([0]), torch.tensor([1]))
    assert ranks.tolist() == [3, 4]  # every non-excluded other item ties with the positive and counts
    padding_high = torch.tensor([[100.0, 0.1, 0.2, 0.3]])
    assert full_ranks(padding_high, torch.tensor([3]), torch.tensor([], dtype=torch.long),
                      torch.tensor([], dtype=torch.long)).tolist() == [0]


def test_relative_drop_by_hand():
    orig = {"ndcg@10": 0.5, "hr@10": 0.8, "n_users": 10}
    shuf = {"ndcg@10": 0.4, "hr@10": 0.9, "n_users": 10}
    drop = relative_drop(orig, shuf)
    assert drop == {"ndcg@10": pytest.approx(0.2), "hr@10": pytest.approx(-0.125)}


def test_shuffle_window_permutes_order_only_inside_the_window():
    g = torch.Generator().manual_seed(0)
    items = torch.tensor([[0, 0, 1, 2, 3, 4, 5, 6], [9, 8, 7, 6, 5, 4, 3, 2], [0, 0, 0, 0, 0, 0, 0, 7]])
    out = shuffle_window(items, 4, g)
    assert out[:, :4].tolist() == items[:, :4].tolist()  # older than the window: untouched
    for a, b in zip(out, items, strict=True):
        assert sorted(a.tolist()) == sorted(b.tolist())  # same items
    assert out[2].tolist() == items[2].tolist()  # one real item: nothing to permute, padding stays left
    whole = shuffle_window(items, None, torch.Generator().manual_seed(0))
    assert whole[0, :2].tolist() == [0, 0]  # padding stays on the left
    assert not torch.equal(whole[:2], items[:2])
    again = shuffle_window(items, None, torch.Generator().manual_seed(0))
    assert torch.equal(whole, again)  # seeded


def test_shuffle_window_changes_most_long_histories():
    g = torch.Generator().manual_seed(3)
    items = torch.arange(1, 201).reshape(20, 10)
    out = shuffle_window(items, None, g)
    assert (out != items).any(1).float().mean() > 0.9
    assert torch.equal(out.sort(1).values, items)
