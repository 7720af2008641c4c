"""The gate: each check passes and fails on its own; a failed gate leaves production untouched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from components.config import parse_params
from components.errors import ConfigError, DataError
from components.stages.gate import floor_checks
from tests.serving.conftest import gate, other_content, package, registry_state, run_stage

METRICS = {
    "popularity": {"ndcg@10": 0.10},
    "llmsrec": {"ndcg@10": 0.30},
    "llmsrec_shuffled": {"ndcg@10": 0.27, "shuffle_drop": {"ndcg@10": 0.10}},
}


def options(cfg: dict):
    """params `gate` with `cfg` set, checked as params.yaml is."""
    return parse_params({"gate": cfg}).gate


def by_name(checks: list[dict]) -> dict[str, dict]:
    return {c["name"]: c for c in checks}


def test_floor_checks_pass_on_a_good_model():
    checks = by_name(floor_checks(METRICS, options({})))
    assert all(c["passed"] for c in checks.values())
    assert checks["lift_over_popularity"]["value"] == pytest.approx(2.0)
    assert checks["shuffle_drop"]["value"] == pytest.approx(0.10)


@pytest.mark.parametrize("failing, change", [
    ("ndcg@10_floor", {"llmsrec": {"ndcg@10": 0.09}, "popularity": {"ndcg@10": 0.05}}),
    ("lift_over_popularity", {"popularity": {"ndcg@10": 0.31}}),
    ("shuffle_drop", {"llmsrec_shuffled": {"ndcg@10": 0.31, "shuffle_drop": {"ndcg@10": -0.03}}}),
])
def test_each_floor_check_fails_alone(failing, change):
    checks = by_name(floor_checks({**METRICS, **change}, options({})))
    assert {n for n, c in checks.items() if not c["passed"]} == {failing}
    assert checks[failing]["value"] < checks[failing]["threshold"]


def test_null_threshold_skips_a_check_and_needs_no_metrics():
    checks = by_name(floor_checks({"llmsrec": {"ndcg@10": 0.0}},
                                  options({"min_ndcg_at_10": None, "min_lift_over_popularity": None,
                                           "min_shuffle_drop": None})))
    assert all(c["passed"] and c.get("skipped") for c in checks.values())


def test_a_zero_baseline_is_beaten_by_any_positive_score():
    """Popularity at NDCG 0 leaves the relative lift undefined, not infinite: a better model passes."""
    checks = by_name(floor_checks({**METRICS, "popularity": {"ndcg@10": 0.0}}, options({})))
    assert checks["lift_over_popularity"]["passed"] and checks["lift_over_popularity"]["value"] is None
    zero = by_name(floor_checks({**METRICS, "popularity": {"ndcg@10": 0.0}, "llmsrec": {"ndcg@10": 0.0}},
                                options({"min_ndcg_at_10": None})))
    assert not zero["lift_over_popularity"]["passed"]


def _per_user(model: np.ndarray, popularity: np.ndarray) -> pd.DataFrame:
    users = np.arange(len(model))
    return pd.concat([pd.DataFrame({"model": "llmsrec", "user_idx": users, "ndcg@10": model}),
                      pd.DataFrame({"model": "popularity", "user_idx": users, "ndcg@10": popularity})])


def test_the_lift_is_judged_on_its_interval_so_a_lucky_sample_cannot_pass_it():
    rng = np.random.default_rng(0)
    pop = np.where(rng.random(300) < 0.2, 1.0, 0.0)
    lucky = np.where(rng.random(300) < 0.32, 1.0, 0.0)  # a point lift near +60% on 300 users, ~+/-35% wide
    metrics = {**METRICS, "llmsrec": {"ndcg@10": float(lucky.mean())}, "popularity": {"ndcg@10": float(pop.mean())}}
    point = by_name(floor_checks(metrics, options({})))["lift_over_popularity"]
    judged = by_name(floor_checks(metrics, options({}), per_user=_per_user(lucky, pop)))["lift_over_popularity"]
    assert point["passed"] and point["value"] > 0.5  # the point value alone would pass
    assert not judged["passed"] and judged["interval"][0] < 0.5 < judged["interval"][1]
    assert judged["value"] == pytest.approx(point["value"]) and judged["decided_on"] == "interval lower end"
    clear = np.where(pop > 0, 1.0, np.where(rng.random(300) < 0.5, 1.0, 0.0))  # every popularity hit, and more
    metrics["llmsrec"] = {"ndcg@10": float(clear.mean())}
    assert by_name(floor_checks(metrics, options({}), per_user=_per_user(clear, pop)))["lift_over_popularity"]["passed"]


def test_missing_metrics_name_the_fix():
    with pytest.raises(DataError, match="evaluate.shuffle, or set gate.min_shuffle_drop: null"):
        floor_checks({"llmsrec": {"ndcg@10": 0.3}, "popularity": {"ndcg@10": 0.1}}, options({}))


@pytest.mark.parametrize("cfg, match", [
    ({"min_ndcg": 0.1}, r"unknown key 'gate\.min_ndcg'\. Fix: did you mean 'gate\.min_ndcg_at_10'"),
    ({"max_regression": -0.1}, r"gate\.max_regression = -0\.1: input should be greater than or equal to 0"),
    ({"min_shuffle_drop": "high"}, r"gate\.min_shuffle_drop = 'high': input should be a valid number"),
    ({"first_model": "always"}, r"gate\.first_model = 'always': input should be 'provisional' or 'reject'"),
])
def test_bad_gate_params(cfg, match):
    with pytest.raises(ConfigError, match=match):
        options(cfg)


def set_params(ws: Path, **gate_cfg) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["gate"].update(gate_cfg)
    (ws / "params.yaml").write_text(yaml.safe_dump(params))


def set_challenger_ndcg(ws: Path, value: float) -> None:
    """Pretend evaluate scored the challenger at `value` for every test user (metrics and per-user agree)."""
    per_user = pd.read_parquet(ws / "reports" / "per_user.parquet")
    per_user.loc[per_user["model"] == "llmsrec", "ndcg@10"] = value
    per_user.to_parquet(ws / "reports" / "per_user.parquet", index=False)
    metrics = json.loads((ws / "reports" / "metrics.json").read_text())
    metrics["llmsrec"]["ndcg@10"] = value
    (ws / "reports" / "metrics.json").write_text(json.dumps(metrics))


def stored_versions(home: Path) -> set[str]:
    return {p.name for p in (home / "models" / "llmsrec").iterdir() if p.is_dir()}


@pytest.mark.slow
@pytest.mark.real_llm
def test_gate_then_package_promotes_and_failures_leave_the_champion(workspace, tmp_path):
    home = tmp_path / "bentoml"

    # 1. First model, gate passes: packaged and promoted.
    gate(workspace, home)
    report = json.loads((workspace / "reports" / "gate.json").read_text())
    assert report["passed"] and report["champion"] is None
    package(workspace, home)
    pkg = json.loads((workspace / "reports" / "package.json").read_text())
    assert pkg["decision"] == "promoted" and pkg["status"] == "passed"
    champion = pkg["tag"]
    assert registry_state(home)["production"] == champion
    root = home / "models" / "llmsrec" / champion.split(":")[1]
    assert (root / "sasrec" / "model.safetensors").is_file()
    assert {p.name for p in (root / "llmsrec").iterdir()} >= {"adapters.safetensors", "item_table.safetensors",
                                                             "titles.json", "item_ids.json", "config.json"}
    assert {p.name for p in (root / "catalogue").iterdir()} == {"items.parquet", "users.parquet",
                                                                "sequences.parquet"}
    manifest = json.loads((root / "package.json").read_text())
    assert manifest["backbone"]["name"] == "smollm2-135m" and not manifest["backbone"]["included"]
    assert manifest["backbone"]["fingerprint"].startswith("gguf-sha256:")
    assert not any(p.stat().st_size > 50e6 for p in root.rglob("*") if p.is_file())  # never the LLM's weights
    # The fixture's folders are no DVC outputs (`dvc repro` records the real version: test_data_version.py,
    # tests/data/test_pipeline_dvc.py); the package says so rather than inventing one.
    assert manifest["data_version"] == "unversioned" and manifest["metrics"]["llmsrec"]
    versions = stored_versions(home)

    # 2. Champion vs challenger: the champion is re-scored on the current candidates. Re-scoring the same
    # model from its package reproduces evaluate's figure exactly; then a worse challenger fails.
    gate(workspace, home)
    regression = by_name(json.loads((workspace / "reports" / "gate.json").read_text())["checks"])["champion_regression"]
    evaluated = json.loads((workspace / "reports" / "metrics.json").read_text())["llmsrec"]["ndcg@10"]
    assert regression["champion_ndcg"] == pytest.approx(evaluated, abs=1e-6) and regression["value"] == pytest.approx(0)
    assert regression["interval"][0] <= 0 <= regression["interval"][1] and regression["decided_on"] == "interval upper end"
    set_challenger_ndcg(workspace, 0.0)
    gate(workspace, home)
    report = json.loads((workspace / "reports" / "gate.json").read_text())
    regression = by_name(report["checks"])["champion_regression"]
    assert report["champion"] == champion and not report["passed"]
    assert regression["champion_ndcg"] > 0 and regression["challenger_ndcg"] == 0 and not regression["passed"]
    assert regression["interval"][1] < -0.02  # the whole interval lies below the allowed regression
    assert [c["name"] for c in report["checks"] if not c["passed"]] == ["champion_regression"]
    out = package(workspace, home)
    assert "REJECTED" in out.stdout
    assert json.loads((workspace / "reports" / "package.json").read_text())["decision"] == "rejected"
    assert registry_state(home)["production"] == champion and stored_versions(home) == versions
    assert registry_state(home)["events"][-1]["action"] == "reject"

    # 3. A floor failure alone, with a challenger that beats the champion: still rejected, champion stays.
    set_challenger_ndcg(workspace, 1.0)
    set_params(workspace, min_ndcg_at_10=1.5)
    gate(workspace, home)
    report = json.loads((workspace / "reports" / "gate.json").read_text())
    assert [c["name"] for c in report["checks"] if not c["passed"]] == ["ndcg@10_floor"]
    assert by_name(report["checks"])["champion_regression"]["passed"]
    package(workspace, home)
    assert registry_state(home)["production"] == champion and stored_versions(home) == versions

    # 4. A challenger that passes, on other data (a re-written sequences file): a second version, promoted.
    set_params(workspace, min_ndcg_at_10=0.0)
    other_content(workspace)
    gate(workspace, home)
    package(workspace, home)
    second = registry_state(home)["production"]
    assert second != champion and len(stored_versions(home)) == 2

    # 5. The registry CLI: list, rollback (twice: the second has nowhere to go), promote, bad tag.
    listing = run_stage(workspace, home, "components.serving.registry", "list").stdout
    assert f"* {second}" in listing and f"  {champion}" in listing
    assert run_stage(workspace, home, "components.serving.registry", "rollback").stdout.strip() == f"production: {champion}"
    out = run_stage(workspace, home, "components.serving.registry", "rollback", check=False)
    assert out.returncode == 1 and "no earlier production version" in out.stderr
    out = run_stage(workspace, home, "components.serving.registry", "promote", "llmsrec:doesnotexist", check=False)
    assert out.returncode == 1 and "no such model" in out.stderr and registry_state(home)["production"] == champion
    assert run_stage(workspace, home, "components.serving.registry", "promote", second).stdout.strip() == \
        f"production: {second}"

    # 6. The gate report of step 4 judged against `champion`; production has moved since: refused.
    out = package(workspace, home, check=False)
    assert out.returncode == 1 and "re-run the gate" in out.stderr and "Traceback" not in out.stderr
    assert registry_state(home)["production"] == second


@pytest.mark.slow
@pytest.mark.real_llm
def test_first_failed_model_is_provisional_or_rejected(workspace, tmp_path):
    """With nothing in production, a failing model is promoted flagged provisional (so `bentoml serve`
    has something to serve after the very first run), or, with first_model: reject, not at all."""
    set_params(workspace, min_ndcg_at_10=1.5)
    home = tmp_path / "provisional"
    gate(workspace, home)
    assert not json.loads((workspace / "reports" / "gate.json").read_text())["passed"]
    package(workspace, home)
    pkg = json.loads((workspace / "reports" / "package.json").read_text())
    assert pkg["decision"] == "provisional" and registry_state(home)["production"] == pkg["tag"]
    assert registry_state(home)["events"][-1]["action"] == "provisional"

    set_params(workspace, first_model="reject")
    home = tmp_path / "strict"
    gate(workspace, home)
    out = package(workspace, home)
    assert "REJECTED" in out.stdout and not (home / "models" / "llmsrec").exists()
