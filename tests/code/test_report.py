"""The run report's pure parts: what a DVC metrics file keeps, and the params diff against the champion.
The page itself is rendered in Chromium by tests/dags/test_dag_e2e.py, from a real DAG run."""

from __future__ import annotations

from pathlib import Path

import yaml

from components.io import numbers_only
from components.stages.report import DEPLOYMENT_SECTIONS, params_diff

REPO = Path(__file__).resolve().parents[2]


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


def test_the_report_depends_on_every_params_section_it_shows():
    """The page diffs every section but the deployment's against the champion, so each is a param of the stage:
    a section added to params.yaml and not to the stage would leave the page stale when it changes."""
    sections = set(yaml.safe_load((REPO / "params.yaml").read_text())) - set(DEPLOYMENT_SECTIONS)
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["report"]
    assert set(stage["params"]) == sections


def test_the_headline_is_a_few_numbers_per_run():
    """DVC's one metrics file: test NDCG@10 of each model (no shuffled or validation variant), the gate, the data."""
    from components.stages.report import headline

    metrics = {"popularity": {"ndcg@10": 0.1, "hr@10": 0.2}, "sasrec": {"ndcg@10": 0.5},
               "sasrec_shuffled": {"ndcg@10": 0.4}, "llmsrec": {"ndcg@10": 0.6, "valid": {"ndcg@10": 0.7}}}
    got = headline(metrics, {"passed": False, "decision": "rejected"}, {"users": 600, "items": 400, "source": "x"})
    assert got == {"ndcg@10": {"popularity": 0.1, "sasrec": 0.5, "llmsrec": 0.6}, "gate_passed": False,
                   "users": 600, "items": 400}
