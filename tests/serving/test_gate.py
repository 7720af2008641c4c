"""The gate: each check passes and fails on its own; a failed gate leaves production untouched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from benchmarks.small_package import GATE_ARGS, PACKAGE_ARGS
from components.config import GateParams, parse_params
from components.errors import ConfigError, DataError
from components.stages import gate as gate_stage
from components.stages import package as package_stage
from components.stages.gate import floor_checks
from tests.serving.conftest import bentoml_store, gate, other_content, package, registry_state, run_stage

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


def judged_workspace(tmp_path: Path, **gate_cfg) -> Path:
    """A workspace with only what the gate reads when it re-scores no champion (`max_regression: null`):
    evaluate's metrics and params. Enough for `package` too whenever the decision is to reject."""
    ws = tmp_path / "ws"
    (ws / "reports").mkdir(parents=True)
    (ws / "reports" / "metrics.json").write_text(json.dumps(METRICS))
    (ws / "params.yaml").write_text(yaml.safe_dump({"gate": {
        "min_lift_over_popularity": None, "min_shuffle_drop": None, "max_regression": None, **gate_cfg}}))
    return ws


def put_in_production(home: Path, tag: str) -> None:
    """The registry's pointer names `tag` (the gate only reads the pointer when it re-scores no champion)."""
    (home / "registry").mkdir(parents=True, exist_ok=True)
    (home / "registry" / "llmsrec.json").write_text(json.dumps({"production": tag, "events": []}))


def run_in(ws: Path, home: Path, main, args: tuple[str, ...], monkeypatch) -> None:
    """A stage's main() in this process, in `ws`, with BentoML's store (and the registry) at `home`."""
    monkeypatch.chdir(ws)
    with bentoml_store(home):
        main(list(args))


# (gate params, production before, decision, failed checks); METRICS' llmsrec NDCG@10 is 0.30
DECISIONS = {
    "pass, first model": ({}, None, "promoted", []),
    "pass over a champion": ({}, "llmsrec:v1", "promoted", []),
    "fail, first model, provisional": ({"min_ndcg_at_10": 0.5}, None, "provisional", ["ndcg@10_floor"]),
    "fail, first model, reject": ({"min_ndcg_at_10": 0.5, "first_model": "reject"}, None, "rejected",
                                  ["ndcg@10_floor"]),
    "fail over a champion": ({"min_ndcg_at_10": 0.5}, "llmsrec:v1", "rejected", ["ndcg@10_floor"]),
}


@pytest.mark.parametrize("case", DECISIONS, ids=list(DECISIONS))
def test_the_gate_writes_the_decision_and_alone_logs_a_rejection(case, tmp_path, monkeypatch):
    """The gate decides promoted | provisional | rejected with its reasons; a rejection is logged in the
    registry's history by the gate, once: `package` then only reads the decision (and the DAG skips it)."""
    cfg, production, decision, failed = DECISIONS[case]
    ws, home = judged_workspace(tmp_path, **cfg), tmp_path / "home"
    if production:
        put_in_production(home, production)
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "manual__2025-01-01")  # as Airflow sets it for a task
    run_in(ws, home, gate_stage.main, (*GATE_ARGS, "--checks", "reports/gate_checks.json"), monkeypatch)
    report = json.loads((ws / "reports" / "gate.json").read_text())
    assert report["decision"] == decision and report["passed"] == (not failed)
    # DVC's metric: numbers only, each check addressable as checks.<name>.passed/value/threshold.
    numbers = json.loads((ws / "reports" / "gate_checks.json").read_text())
    assert numbers == {"passed": not failed, "checks": {name: {k: c[k] for k in ("passed", "value", "threshold")}
                                                        for name, c in report["checks"].items()}}
    assert report["reasons"] == {"failed_checks": failed, "nothing_in_production": production is None,
                                 "first_model_policy": cfg.get("first_model", GateParams().first_model),
                                 "production_before": production}
    assert ("ndcg@10_floor" in report["reason"]) == bool(failed)
    assert ("provisional" in report["reason"]) == (decision == "provisional")
    events = registry_state(home)["events"] if (home / "registry" / "llmsrec.json").is_file() else []
    if decision != "rejected":
        assert events == []
        return
    (event,) = events
    assert event["action"] == "reject" and event["tag"] is None and event["previous"] == production
    assert event["reason"] == f"airflow run manual__2025-01-01: {report['reason']}"
    run_in(ws, home, package_stage.main, PACKAGE_ARGS, monkeypatch)
    assert json.loads((ws / "reports" / "package.json").read_text()) == {
        "decision": "rejected", "gate_passed": False, "failed_checks": failed, "tag": None, "production": production}
    assert registry_state(home)["events"] == [event]  # not logged a second time


def spoil(report: dict, change) -> dict:
    change(report)
    return report


# What is done to a report the real gate wrote, and what the refusal says
BAD_REPORTS = {
    "written before the gate decided": (
        lambda r: {k: v for k, v in r.items() if k not in ("decision", "reason", "reasons")},
        "holds no release decision ('decision' is None, not one of promoted, provisional, rejected)"),
    "unknown decision": (lambda r: {**r, "decision": "maybe"}, "holds no release decision ('decision' is 'maybe'"),
    "decision without reasons": (lambda r: {k: v for k, v in r.items() if k != "reasons"},
                                 "has the decision 'provisional' without its reasons"),
    "promoted with a failed check": (lambda r: {**r, "decision": "promoted"},
                                     "has the decision 'promoted', which its reasons contradict"),
    "provisional over a champion": (
        lambda r: spoil(r, lambda x: x["reasons"].update(nothing_in_production=False, production_before="llmsrec:v1")),
        "has the decision 'provisional', which its reasons contradict"),
    "provisional under first_model: reject": (
        lambda r: spoil(r, lambda x: x["reasons"].update(first_model_policy="reject")),
        "has the decision 'provisional', which its reasons contradict (failed checks: ndcg@10_floor; nothing in "
        "production: True; gate.first_model: reject)"),
    "not a JSON object": (lambda r: ["decision", "promoted"], "holds no release decision ('decision' is None"),
    "not JSON": (None, "is not a readable gate report (JSONDecodeError"),
}


@pytest.mark.parametrize("bad", BAD_REPORTS, ids=list(BAD_REPORTS))
def test_package_refuses_a_report_without_a_valid_decision(bad, tmp_path, monkeypatch, capsys):
    """A gate report whose decision is missing or garbled stops `package` with one line naming the report
    and the fix; nothing is packaged and the registry is not touched."""
    ws, home = judged_workspace(tmp_path, min_ndcg_at_10=0.5), tmp_path / "home"
    run_in(ws, home, gate_stage.main, GATE_ARGS, monkeypatch)  # a first model that failed: provisional
    path = ws / "reports" / "gate.json"
    change, says = BAD_REPORTS[bad]
    if change is None:
        path.write_text(path.read_text()[:40])
    else:
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_in(ws, home, package_stage.main, PACKAGE_ARGS, monkeypatch)
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("ERROR [package] reports/gate.json: ") and says in err, err
    assert "Fix: re-run the gate so that it decides: `dvc repro -f -s gate`" in err and "Traceback" not in err
    assert not (ws / "reports" / "package.json").exists() and not (home / "registry").exists()


def test_package_refuses_a_provisional_release_once_production_is_filled(tmp_path, monkeypatch, capsys):
    """A first model the gate released as provisional is not packaged over a model promoted since (with
    the champion check off, nothing else in the report would notice): the decision is stale."""
    ws, home = judged_workspace(tmp_path, min_ndcg_at_10=0.5), tmp_path / "home"
    run_in(ws, home, gate_stage.main, GATE_ARGS, monkeypatch)
    put_in_production(home, "llmsrec:v1")
    with pytest.raises(SystemExit):
        run_in(ws, home, package_stage.main, PACKAGE_ARGS, monkeypatch)
    err = capsys.readouterr().err
    assert "reports/gate.json: released a provisional first model, but production is now llmsrec:v1" in err
    assert "re-run the gate against the current production model: `dvc repro -f -s gate`" in err
    assert registry_state(home) == {"production": "llmsrec:v1", "events": []}


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
    regression = json.loads((workspace / "reports" / "gate.json").read_text())["checks"]["champion_regression"]
    evaluated = json.loads((workspace / "reports" / "metrics.json").read_text())["llmsrec"]["ndcg@10"]
    assert regression["champion_ndcg"] == pytest.approx(evaluated, abs=1e-6) and regression["value"] == pytest.approx(0)
    assert regression["interval"][0] <= 0 <= regression["interval"][1] and regression["decided_on"] == "interval upper end"
    set_challenger_ndcg(workspace, 0.0)
    gate(workspace, home)
    report = json.loads((workspace / "reports" / "gate.json").read_text())
    regression = report["checks"]["champion_regression"]
    assert report["champion"] == champion and not report["passed"]
    assert regression["champion_ndcg"] > 0 and regression["challenger_ndcg"] == 0 and not regression["passed"]
    assert regression["interval"][1] < -0.02  # the whole interval lies below the allowed regression
    assert [n for n, c in report["checks"].items() if not c["passed"]] == ["champion_regression"]
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
    assert [n for n, c in report["checks"].items() if not c["passed"]] == ["ndcg@10_floor"]
    assert report["checks"]["champion_regression"]["passed"]
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
