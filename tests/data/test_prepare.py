"""Prepare: k-core, index mapping, leave-last-out split, fixed evaluation candidates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.config import CandidateParams, DataParams, SyntheticParams, parse_params
from components.data.preprocess import chronological, kcore
from components.data.sources.synthetic import generate
from components.errors import ConfigError
from components.stages.prepare import prepare


@pytest.fixture(scope="module")
def synthetic():
    return generate(SyntheticParams(num_users=300, num_items=200, num_topics=10), seed=7)


@pytest.fixture(scope="module")
def prepared(synthetic):
    return prepare(*synthetic, DataParams(), CandidateParams(num_negatives=99), seed=7)


def test_kcore_reaches_a_fixed_point():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user_id": rng.zipf(1.6, 5000).astype(str), "item_id": rng.zipf(1.4, 5000).astype(str)})
    out, passes = kcore(df, 5, 5)
    assert passes > 2  # removing items pushed users below the threshold and vice versa
    assert (out.groupby("user_id").size() >= 5).all() and (out.groupby("item_id").size() >= 5).all()
    again, more = kcore(out, 5, 5)
    assert more == 1 and len(again) == len(out)
    # Nothing that satisfied the core was lost: a brute-force fixed point gives the same rows.
    ref = df
    for _ in range(100):
        ref = ref[ref.groupby("user_id")["user_id"].transform("size").ge(5)]
        ref = ref[ref.groupby("item_id")["item_id"].transform("size").ge(5)]
    assert len(ref) == len(out)


def test_index_mapping_is_dense_and_deterministic(prepared, synthetic):
    items, users = prepared["items"], prepared["users"]
    assert items["idx"].tolist() == list(range(1, len(items) + 1))  # 0 stays padding
    assert users["idx"].tolist() == list(range(1, len(users) + 1))
    assert items["item_id"].is_unique and items["title"].str.len().gt(0).all()
    again = prepare(*synthetic, DataParams(), CandidateParams(num_negatives=99), seed=7)
    assert again["summary"]["item_mapping_hash"] == prepared["summary"]["item_mapping_hash"]
    pd.testing.assert_frame_equal(again["items"], items)


def test_sequences_are_chronological_with_deterministic_ties():
    df = pd.DataFrame({"user_id": ["u"] * 4, "item_id": ["c", "a", "b", "d"], "timestamp": [5, 1, 5, 3],
                       "_source": "f", "_row": [1, 2, 3, 4]})
    assert chronological(df)["item_id"].tolist() == ["a", "d", "c", "b"]  # tie at t=5 keeps file order
    assert chronological(df.iloc[::-1])["item_id"].tolist() == ["a", "d", "c", "b"]


def test_split_has_no_leakage(prepared, synthetic):
    inter, _ = synthetic
    seqs = prepared["sequences"]
    cand = prepared["candidates"]
    item_ids = prepared["items"]["item_id"].to_numpy()
    user_ids = dict(zip(prepared["users"]["idx"], prepared["users"]["user_id"], strict=True))
    last_two = inter.sort_values(["user_id", "timestamp"]).groupby("user_id")["item_id"].apply(lambda s: list(s[-2:]))
    for split, offset in (("valid", 2), ("test", 1)):
        c = cand[cand["split"] == split].set_index("user_idx")
        for u, items, ts in seqs.itertuples(index=False):
            assert item_ids[c.loc[u, "positive"] - 1] == last_two[user_ids[u]][-offset]
            assert c.loc[u, "positive"] == items[-offset]
            train = items[:-2]
            assert len(train) == len(items) - 2 and np.all(np.diff(ts) >= 0)
            # the test interaction is the last one and comes after everything the model trains on
            assert ts[-1] >= ts[: len(train)].max()


def test_candidates_exclude_history_have_no_duplicates_and_include_the_positive(prepared):
    seqs = prepared["sequences"].set_index("user_idx")["items"]
    n = len(prepared["items"])
    for _split, u, pos, neg in prepared["candidates"].itertuples(index=False):
        full = np.r_[pos, neg]
        assert len(neg) == 99 and len(np.unique(full)) == 100
        assert pos in seqs[u]
        assert not np.isin(neg, seqs[u]).any()
        assert neg.min() >= 1 and neg.max() <= n


def test_candidates_are_deterministic_by_seed(synthetic):
    a = prepare(*synthetic, DataParams(), CandidateParams(), seed=1)["candidates"]
    b = prepare(*synthetic, DataParams(), CandidateParams(), seed=1)["candidates"]
    c = prepare(*synthetic, DataParams(), CandidateParams(), seed=2)["candidates"]
    assert all(np.array_equal(x, y) for x, y in zip(a["negatives"], b["negatives"], strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a["negatives"], c["negatives"], strict=True))


def test_eval_max_users_and_user_subsample(synthetic):
    out = prepare(*synthetic, DataParams(max_users=120), CandidateParams(max_users=50), seed=3)
    assert out["summary"]["users"] <= 120
    assert out["candidates"].groupby("split").size().to_dict() == {"test": 50, "valid": 50}
    assert (out["sequences"]["items"].map(len) >= 5).all()


def test_user_subsample_keeps_its_size_and_whole_histories_on_a_sparse_catalogue():
    # Amazon-like 5-core data: each item has exactly 5 buyers, so within a 10% user sample almost no
    # item keeps 5 and a second k-core would cascade to nothing. The sample must stay as asked.
    rng = np.random.default_rng(0)
    n_users, n_items = 1000, 1200  # every user buys 6 items, every item has 5 buyers: the full data is a 5-core
    buyers = rng.permutation(np.repeat(np.arange(n_users), 6))
    df = pd.DataFrame({"user_id": [f"u{b}" for b in buyers], "item_id": np.repeat([f"i{k}" for k in range(n_items)], 5),
                       "timestamp": rng.integers(0, 10**6, len(buyers))})
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(n_items)], "title": "t", "description": ""})
    full, _ = kcore(df, 5, 5)
    out = prepare(df, items, DataParams(max_users=100), CandidateParams(num_negatives=20), seed=1)
    assert out["summary"]["users"] == 100
    kept = out["users"]["user_id"]
    expected = full[full["user_id"].isin(kept)].groupby("user_id").size().sort_index()
    got = out["sequences"]["items"].map(len).set_axis(kept.to_numpy()).sort_index()
    assert (got == expected).all()  # every sampled user keeps the history that passed the k-core


def test_too_many_negatives_for_the_catalogue(synthetic):
    with pytest.raises(ConfigError, match="lower candidates.num_negatives") as e:
        prepare(*synthetic, DataParams(), CandidateParams(num_negatives=250), seed=0)
    assert "but user 'U0" in str(e.value)  # the user's own id, not an internal index


@pytest.mark.parametrize("bad", [0, -3, 2.5, "99", True])
def test_no_negatives_is_refused(bad):
    with pytest.raises(ConfigError, match=r"candidates\.num_negatives = .*negatives per evaluated user"):
        parse_params({"candidates": {"num_negatives": bad}})
