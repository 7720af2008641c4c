"""Histories, training windows and negative sampling on a hand-made prepared directory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from components.data.examples import TrainingSet
from components.data.sequences import Prepared, flat_offsets, flat_ranges, right_aligned
from components.errors import DataError
from components.io import write_json, write_parquet
from components.models import Popularity
from components.stages.prepare import mapping_hash

SEQS = {1: [1, 2, 3, 4, 5], 2: [6, 5, 4], 3: [2, 4, 6, 1, 3]}


@pytest.fixture
def tiny(tmp_path) -> Prepared:
    items = pd.DataFrame({"idx": np.arange(1, 7, dtype=np.int32), "item_id": [f"I{i}" for i in range(1, 7)],
                          "title": [f"t{i}" for i in range(1, 7)], "description": ""})
    seq = pd.DataFrame({"user_idx": np.array([3, 1, 2], dtype=np.int32),  # stored unsorted on purpose
                        "items": [np.array(SEQS[u], dtype=np.int32) for u in (3, 1, 2)],
                        "timestamps": [np.array(SEQS[u]) * 10 + u for u in (3, 1, 2)]})
    cand = pd.DataFrame({"split": ["valid", "valid", "valid", "test", "test", "test"],
                         "user_idx": np.array([1, 2, 3, 1, 2, 3], dtype=np.int32),
                         "positive": np.array([4, 5, 1, 5, 4, 3], dtype=np.int32),
                         "negatives": [np.array([6], dtype=np.int32), np.array([1], dtype=np.int32),
                                       np.array([5], dtype=np.int32)] * 2})
    write_parquet(items, tmp_path / "items.parquet")
    write_parquet(seq, tmp_path / "sequences.parquet")
    write_parquet(cand, tmp_path / "candidates.parquet")
    write_json(tmp_path / "meta.json", {"items": 6, "item_mapping_hash": mapping_hash(items["item_id"])})
    return Prepared.load(tmp_path)


def test_right_aligned_pads_left_and_keeps_the_most_recent():
    flat = np.array([1, 2, 3, 4, 5, 6])
    out = right_aligned(flat, np.array([0, 3, 5]), np.array([3, 5, 5]), 2)
    assert out.tolist() == [[2, 3], [4, 5], [0, 0]]


def test_flat_ranges_and_offsets_concatenate_each_range():
    """One formula for both: the position inside each range, and the range itself (empty ranges vanish)."""
    assert flat_offsets(np.array([3, 0, 2])).tolist() == [0, 1, 2, 0, 1]
    assert flat_ranges(np.array([5, 9, 0]), np.array([8, 9, 2])).tolist() == [5, 6, 7, 0, 1]
    assert flat_offsets(np.array([], dtype=np.int64)).tolist() == []
    assert flat_ranges(np.array([], dtype=np.int64), np.array([], dtype=np.int64)).tolist() == []


def test_split_histories_cut_the_right_items(tiny):
    rows = tiny.rows(np.array([1, 2, 3]))
    valid = tiny.histories("valid", rows)
    assert valid.items.tolist() == [[1, 2, 3], [0, 0, 6], [2, 4, 6]]  # items[:-2]
    test = tiny.histories("test", rows)
    assert test.items.tolist() == [[1, 2, 3, 4], [0, 0, 6, 5], [2, 4, 6, 1]]  # items[:-1]
    assert test.timestamps.tolist() == [[11, 21, 31, 41], [0, 0, 62, 52], [23, 43, 63, 13]]
    assert test.users.tolist() == [1, 2, 3]
    short = tiny.histories("test", rows, max_len=2)
    assert short.items.tolist() == [[3, 4], [6, 5], [6, 1]]
    assert tiny.candidates["test"].items[:, 0].tolist() == [5, 4, 3]  # positive first


def test_training_windows_pair_each_item_with_the_next(tiny):
    ts = TrainingSet(tiny, window=3)
    assert ts.users.tolist() == [1, 3]  # user 2 has one training item: nothing to predict
    assert ts.inputs.tolist() == [[0, 1, 2], [0, 2, 4]]
    assert ts.targets.tolist() == [[0, 2, 3], [0, 4, 6]]
    batch = next(ts.batches(8, 1, np.random.default_rng(0)))
    assert batch.histories.items.shape == (2, 2)  # the all-padding first column is trimmed
    assert sorted(batch.targets.tolist()) == [[2, 3], [4, 6]]
    assert batch.negatives.shape == (2, 2, 1)


def test_negatives_avoid_the_users_training_items(tiny):
    ts = TrainingSet(tiny, window=3)
    neg = ts.sample_negatives(np.array([0, 1]), (4, 50), np.random.default_rng(1))
    assert neg.shape == (2, 4, 50)
    assert not np.isin(neg[0], [1, 2, 3]).any()
    assert not np.isin(neg[1], [2, 4, 6]).any()
    assert set(np.unique(neg[0])) == {4, 5, 6}  # every allowed item is reachable


def test_popularity_counts_training_items_only(tiny):
    model = Popularity.fit(tiny.train_items(), tiny.item_ids, tiny.item_mapping_hash)
    assert model.counts.tolist() == [0, 1, 2, 1, 1, 0, 2]  # items 4/5 as valid/test targets do not count
    scores = model.score_candidates(tiny.histories("test", np.array([0])), torch.tensor([[2, 5, 6]]))
    assert scores.tolist() == [[2.0, 0.0, 2.0]]


def test_missing_prepared_file_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="dvc repro prepare"):
        Prepared.load(tmp_path)
