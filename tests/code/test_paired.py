"""The paired comparison the quality tables and the gate use: intervals over users, kept paired."""

from __future__ import annotations

import numpy as np
import pytest

from components.evaluation.paired import clears, paired_comparison


def _ndcg_like(rng, n):
    return np.where(rng.random(n) < 0.2, 1 / np.log2(rng.integers(0, 10, n) + 2), 0.0)


def test_a_model_clearly_above_another_has_its_whole_interval_above_the_bar():
    rng = np.random.default_rng(0)
    b = _ndcg_like(rng, 3000)
    a = b.copy()
    a[rng.random(3000) < 0.1] += 0.3  # 10% of the users gain: mean ratio about 1.15
    c = paired_comparison(a, b)
    assert c["ratio_ci"][0] <= c["ratio"] <= c["ratio_ci"][1] and c["diff_ci"][0] > 0
    assert clears(c, 1.03) and not clears(c, c["ratio_ci"][1])
    assert c["n_users"] == 3000 and c["p_value"] < 1e-6


def test_pairing_is_what_makes_a_small_consistent_gain_visible():
    """Every user gains 0.002: paired, that is certain; shuffled (unpaired), the users' spread hides it."""
    rng = np.random.default_rng(1)
    b = _ndcg_like(rng, 3000)
    a = b + 0.002
    paired = paired_comparison(a, b)
    unpaired = paired_comparison(a, rng.permutation(b))
    assert paired["diff_ci"][0] > 0.0019
    assert unpaired["diff_ci"][0] < 0 < unpaired["diff_ci"][1]


def test_equal_models_tie_and_a_zero_baseline_has_no_ratio():
    rng = np.random.default_rng(2)
    a = _ndcg_like(rng, 500)
    same = paired_comparison(a, a)
    assert same["ratio"] == 1.0 and same["diff"] == 0.0 and same["p_value"] == 1.0 and not clears(same, 1.0)
    zero = paired_comparison(a, np.zeros_like(a))
    assert zero["ratio"] is None and zero["ratio_ci"] == [None, None] and not clears(zero, 1.0)


def test_unpaired_inputs_are_refused():
    with pytest.raises(ValueError, match="same users"):
        paired_comparison(np.zeros(5), np.zeros(6))
    with pytest.raises(ValueError, match="at least 2 users"):
        paired_comparison(np.zeros(1), np.zeros(1))


def test_an_interval_without_finite_ends_is_none_and_every_result_is_strict_json():
    """Five users, one hit for B: many resamples have mean(B) = 0, so the ratio has no finite interval."""
    import json

    a, b = np.array([1.0, 0.5, 0.0, 0.0, 0.3]), np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    c = paired_comparison(a, b)
    json.dumps(c, allow_nan=False)  # raises on NaN or infinity
    assert c["ratio"] == pytest.approx(1.8) and not clears(c, 1.0)
    assert c["ratio_ci"] == [None, None] and c["diff_ci"][0] < 0 < c["diff_ci"][1]


def test_per_user_series_are_compared_on_the_users_both_hold_in_one_order():
    import pandas as pd

    from components.evaluation.paired import paired_by_user

    rng = np.random.default_rng(4)
    b = pd.Series(_ndcg_like(rng, 400), index=np.arange(400))
    a = (b + 0.01).iloc[::-1].drop(index=[0, 1, 2])  # reversed, three users missing
    c = paired_by_user(a, b)
    assert c["n_users"] == 397 and c["diff"] == pytest.approx(0.01) and c["diff_ci"][0] > 0.0099
    assert paired_by_user(a.iloc[:1], b) is None
