"""The run report's pure parts: what a DVC metrics file keeps, and the params diff against the champion.
The page itself is rendered in Chromium by tests/dags/test_dag_e2e.py, from a real DAG run."""

from __future__ import annotations

from components.io import numbers_only
from components.stages.report import params_diff


def test_a_metrics_file_keeps_numbers_and_booleans_only():
    summary = {"users": 3, "density": 0.5, "passed": True, "hash": "2a40", "backbone": "smollm2-135m",
               "sequence_length": {"min": 1, "max": 9}, "warm_start": {"from": "models/x"}, "failed": ["a"],
               "none": None}
    assert numbers_only(summary) == {"users": 3, "density": 0.5, "passed": True,
                                     "sequence_length": {"min": 1, "max": 9}}


def test_params_diff_names_every_changed_leaf_as_the_champion_stored_it():
    champion = {"gate": {"min_ndcg_at_10": 0.1, "max_regression": "null"}, "seed": 42, "llm": {"layers": [1, 2]}}
    current = {"gate": {"min_ndcg_at_10": 0.2, "max_regression": None}, "seed": 42, "llm": {"layers": [1, 2]},
               "drift": {"hold_above": 0.5}}
    # None is stored as "null" in BentoML's metadata: not a change.
    assert params_diff(current, champion) == [("drift.hold_above", "(absent)", 0.5),
                                              ("gate.min_ndcg_at_10", 0.1, 0.2)]
    assert params_diff(current, current) == []
