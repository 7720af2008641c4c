"""The DAG file imports cleanly, and its tasks are exactly dvc.yaml's stages plus the orchestration tasks."""

from __future__ import annotations

import pytest

from tests.conftest import REPO

ORCHESTRATION = {"prepare_warm_start", "check_gate", "mark_rejected", "reload_serving", "run_summary"}


@pytest.fixture(scope="module")
def dagbag(airflow_home):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["llm_srec_retraining"]


def dvc_stages() -> list[str]:
    import yaml

    return list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


def test_dagbag_has_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "llm_srec_retraining" in dagbag.dag_ids


def test_tasks_are_the_dvc_stages_plus_orchestration(dag):
    assert set(dag.task_ids) == set(dvc_stages()) | ORCHESTRATION


def test_edges_follow_dvc_deps_and_outs(dag):
    up = {t.task_id: set(t.upstream_task_ids) for t in dag.tasks}
    # The landing (a DVC stage: it writes the raw store) comes first, then the warm start, which looks at
    # whether anything new arrived, then the stages that read the store.
    assert up["ingest_batches"] == set() and up["prepare_warm_start"] == {"ingest_batches"}
    assert up["ingest"] == {"ingest_batches", "prepare_warm_start"}
    assert "ingest" in up["validate"] and "validate" in up["prepare"] and "prepare" in up["pretrain_sasrec"]
    assert {"pretrain_sasrec", "prepare"} <= up["distill"]
    assert {"distill", "pretrain_sasrec"} <= up["evaluate"]
    # The branch sits between the gate and what the gate releases.
    assert up["check_gate"] == {"gate"}
    assert "check_gate" in up["package"] and up["reload_serving"] == {"package"}
    assert up["mark_rejected"] == {"check_gate"}
    assert up["run_summary"] >= {"mark_rejected", "reload_serving", "report"}
    # The run report follows the gate stage whatever it decided (not the branch), and package, which stores it
    # as the model card, waits for both.
    assert up["report"] >= {"gate"} and "check_gate" not in up["report"] and {"report", "check_gate"} <= up["package"]


def test_dag_settings(dag):
    from datetime import UTC

    assert dag.doc_md and "llm_srec_retraining" in dag.doc_md
    assert dag.tags and dag.catchup is False and dag.max_active_runs == 1
    assert dag.start_date.utcoffset() == UTC.utcoffset(None)
    dvc_tasks = [dag.get_task(s) for s in dvc_stages()]
    assert {t.pool for t in dvc_tasks if t.task_id != "distill"} == {"dvc"}
    distill = dag.get_task("distill")
    assert (distill.queue, distill.pool) == ("gpu", "gpu")
    assert all(t.retries == 2 and t.retry_exponential_backoff for t in dvc_tasks)
    assert dag.get_task("run_summary").trigger_rule == "all_done"
    # Cron and the landing-zone Asset (with a watcher: data-aware, no polling worker).
    timetable = dag.timetable
    assert type(timetable).__name__ == "AssetOrTimeSchedule"
    assert "0 3 * * *" in str(timetable)
    assert "llm_srec_landing_zone" in str(timetable) and "FileDeleteTrigger" in str(timetable)


def test_a_new_stage_in_dvc_yaml_becomes_a_task(tmp_path, airflow_home):
    """No DAG edit: a stage appended to dvc.yaml shows up, wired after what it reads."""
    import subprocess

    import yaml

    from tests.conftest import make_workspace

    ws = make_workspace(tmp_path / "ws")
    spec = yaml.safe_load((ws / "dvc.yaml").read_text())
    spec["stages"]["report"] = {"cmd": "python -c 'print(1)' > reports/extra.txt",
                                "deps": ["reports/metrics.json"], "outs": ["reports/extra.txt"]}
    (ws / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    subprocess.run(["git", "add", "dvc.yaml"], cwd=ws, check=True)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ws / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags["llm_srec_retraining"]
    assert set(dag.task_ids) == set(spec["stages"]) | ORCHESTRATION
    assert dag.get_task("report").upstream_task_ids == {"evaluate"}
    assert "report" in dag.get_task("run_summary").upstream_task_ids


def test_a_pipeline_without_the_gate_stage_is_refused(tmp_path, airflow_home):
    """Nothing is released without a gate: a dvc.yaml whose stages do not write the gate report does not load."""
    import subprocess

    import yaml

    from tests.conftest import make_workspace

    ws = make_workspace(tmp_path / "ws")
    spec = yaml.safe_load((ws / "dvc.yaml").read_text())
    del spec["stages"]["gate"], spec["stages"]["package"]
    (ws / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    subprocess.run(["git", "add", "dvc.yaml"], cwd=ws, check=True)
    from airflow.dag_processing.dagbag import DagBag

    errors = DagBag(dag_folder=str(ws / "dags")).import_errors
    assert len(errors) == 1 and "orchestration.gate_report (reports/gate.json) is written by no" in \
        next(iter(errors.values())), errors


def test_run_outcome_reports_a_provisional_first_model_as_such():
    """A failed gate with an empty store releases the first model flagged provisional: the summary must
    say so (not "rejected, production stays empty"), and a failed gate with a champion stays rejected."""
    from components.orchestration.release import outcome_of

    done = {"gate": "success", "check_gate": "success", "package": "success"}
    provisional = {"release": True, "decision": "provisional", "reason": "gate failed: shuffle_drop"}
    outcome, reason = outcome_of(done, {"gate": True}, provisional, None, "llmsrec:v1")
    assert outcome == "provisional" and "llmsrec:v1" in reason and "shuffle_drop" in reason
    rejected = {"release": False, "decision": "rejected", "reason": "gate failed: shuffle_drop"}
    assert outcome_of({**done, "package": "skipped"}, {"gate": True}, rejected, "llmsrec:v1", "llmsrec:v1")[0] \
        == "rejected"
    passed = {"release": True, "decision": "promoted", "reason": "gate passed"}
    assert outcome_of(done, {"gate": True}, passed, "llmsrec:v1", "llmsrec:v2")[0] == "promoted"
    # The reload after a promotion failed: the run failed, but production did change, and the reason says so.
    outcome, reason = outcome_of({**done, "reload_serving": "failed"}, {"gate": True}, passed, "llmsrec:v1",
                                 "llmsrec:v2")
    assert outcome == "failed" and "reload_serving" in reason and "production is now llmsrec:v2" in reason, reason


def test_check_gate_follows_the_gate_s_decision_not_its_own(tmp_path):
    """`check_gate` branches on the decision the gate wrote, never on one of its own: a first model the gate
    released as provisional stays released although production has been filled since, a first model
    rejected under `gate.first_model: reject` stays rejected, and a report without a decision fails the
    task naming the file and the fix."""
    import json

    from components.errors import DataError
    from components.orchestration.release import gate_decision
    from tests.serving.conftest import bentoml_store

    home = tmp_path / "home"
    (home / "registry").mkdir(parents=True)
    (home / "registry" / "llmsrec.json").write_text(json.dumps({"production": "llmsrec:v1", "events": []}))
    report = tmp_path / "reports" / "gate.json"
    report.parent.mkdir()
    failed = {"shuffle_drop": {"value": 0.01, "threshold": 0.04, "passed": False}}

    def judged(decision: str, reason: str) -> dict:
        content = {"decision": decision, "reason": reason, "passed": False, "checks": failed,
                   "reasons": {"failed_checks": ["shuffle_drop"], "nothing_in_production": True,
                               "first_model_policy": "provisional", "production_before": None}}
        report.write_text(json.dumps(content))
        return gate_decision(tmp_path, "reports/gate.json")

    with bentoml_store(home):  # the registry now holds a production model
        provisional = judged("provisional", "gate failed: shuffle_drop (first model: released as provisional)")
        assert provisional == {"release": True, "decision": "provisional", "passed": False,
                               "failed_checks": ["shuffle_drop"], "checks": failed,
                               "reason": "gate failed: shuffle_drop (first model: released as provisional)"}
        rejected = judged("rejected", "gate failed: shuffle_drop (first model: gate.first_model is reject)")
        assert not rejected["release"] and rejected["decision"] == "rejected"
        report.write_text(json.dumps({"passed": False, "first_model": "provisional", "checks": failed}))
        with pytest.raises(DataError, match=r"reports/gate\.json: holds no release decision .* Fix: re-run the gate"):
            gate_decision(tmp_path, "reports/gate.json")


def test_a_stage_that_prints_megabytes_on_one_line_fails_with_a_short_message(tmp_path):
    """A stage whose last output line is 5 MB (a dumped array, a runaway print) fails with a message, a log
    line and a recorded run error of a few thousand characters, each saying how long the cut text was."""
    from components.errors import MAX_MESSAGE
    from components.orchestration.release import read_errors, record_error
    from components.orchestration.runner import StageFailed, run_module

    (tmp_path / "runaway.py").write_text("print('x' * 5_000_000)\nraise SystemExit(1)\n")
    logged: list[str] = []
    with pytest.raises(StageFailed) as e:
        run_module(tmp_path, ["runaway"], log=logged.append)
    assert len(str(e.value)) < MAX_MESSAGE + 200 and "5,000,000 characters in all" in str(e.value)
    assert max(map(len, logged)) <= MAX_MESSAGE
    record_error(tmp_path, "run_1", "distill", e.value)
    kept = read_errors(tmp_path, "run_1")["distill"]
    assert len(kept) <= MAX_MESSAGE and "characters in all" in kept
