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
    # whether anything new arrived, then the stages that read the store (ingest's own edge from the landing
    # is implied, so not drawn).
    assert up["ingest_batches"] == set() and up["prepare_warm_start"] == {"ingest_batches"}
    assert up["ingest"] == {"prepare_warm_start"}
    assert up["validate"] == {"ingest"} and up["prepare"] == {"validate"} and up["pretrain_sasrec"] == {"prepare"}
    assert up["distill"] == {"pretrain_sasrec"} and up["evaluate"] == {"distill"}
    # The branch sits between the gate and what the gate releases.
    assert up["check_gate"] == {"gate"}
    assert up["reload_serving"] == {"package"} and up["mark_rejected"] == {"check_gate"}
    # The run report follows the gate stage whatever it decided (not the branch), and package, which stores it
    # as the model card, waits for both.
    assert up["report"] == {"gate"} and up["package"] == {"report", "check_gate"}
    assert up["run_summary"] == {"mark_rejected", "reload_serving", "report"}


def test_the_graph_has_direct_edges_only_and_the_order_of_dvc_s_data_flow(dag):
    """The DAG draws (and wires) its transitive reduction: no edge is implied by a longer path, and every
    stage still runs after everything DVC's data flow puts before it. The one implied edge kept is report ->
    run_summary: run_summary runs when its upstream are done (all_done), and a rejecting check_gate skips
    package (so reload_serving) at once, so only that edge makes a rejected run's summary wait for its report.
    `airflow dags show` (Airflow's render_dag, with the graphviz package) draws exactly these edges."""
    import networkx as nx
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.dot_renderer import render_dag

    from components.orchestration.graph import pipeline_stages

    g = nx.DiGraph([(u, t.task_id) for t in dag.tasks for u in t.upstream_task_ids])
    stages = pipeline_stages(REPO)
    tid = {s.address: s.task_id for s in stages}
    data = {(tid[u], s.task_id) for s in stages for u in s.upstream}
    assert len(data) > 20  # dvc dag's own edges, most of them implied by others
    assert all(nx.has_path(g, u, v) for u, v in data), "a stage no longer waits for one it reads from"
    assert {(u, v) for u, v in g.edges if u in tid.values() and v in tid.values()} <= data
    assert nx.descendants(g, "prepare_warm_start") == set(dag.task_ids) - {"ingest_batches", "prepare_warm_start"}
    assert nx.ancestors(g, "run_summary") == set(dag.task_ids) - {"run_summary"}
    implied = {(u, v) for u, v in g.edges if nx.has_path(nx.restricted_view(g, [], [(u, v)]), u, v)}
    assert implied == {("report", "run_summary")}, implied
    dot = render_dag(DagSerialization.from_dict(DagSerialization.to_dict(dag))).source
    assert dot.count(" -> ") == g.number_of_edges() == 17


def test_direct_edges_keep_reachability_and_the_edges_into_a_waiting_task():
    import networkx as nx

    from components.errors import ConfigError
    from components.orchestration.graph import direct_edges

    order = [("a", "b"), ("b", "c"), ("a", "c"), ("c", "d"), ("a", "d"), ("b", "d"), ("a", "c")]
    assert direct_edges(order) == [("a", "b"), ("b", "c"), ("c", "d")]
    assert direct_edges(order, keep_into={"d"}) == [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d"), ("b", "d")]
    closure = nx.transitive_closure(nx.DiGraph(order))
    assert set(nx.transitive_closure(nx.DiGraph(direct_edges(order))).edges) == set(closure.edges)
    with pytest.raises(ConfigError, match=r"cycle \(a -> b -> c\)"):
        direct_edges([("a", "b"), ("b", "c"), ("c", "a")])


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
    # The UI header's Schedule draws the Asset alone: the cron is in the title, the doc and the description.
    assert "**Schedule: cron `0 3 * * *` UTC (At 03:00) or a landed batch (Asset `llm_srec_landing_zone`)**" \
        in dag.doc_md
    assert dag.description.endswith("Runs on cron 0 3 * * * UTC or a landed batch")
    assert dag.dag_display_name == "llm_srec_retraining · cron 0 3 * * * UTC or a landed batch"
    # Every task says what it does: the orchestration tasks from their docstrings, a stage from its module's.
    assert not [t.task_id for t in dag.tasks if not t.doc_md]
    assert "Follow the gate's decision" in dag.get_task("check_gate").doc_md
    validate = dag.get_task("validate").doc_md
    assert validate.startswith("`dvc repro -s validate`: `python -m components.stages.validate --in data/ingested")
    assert "Stage `validate`: Great Expectations checks" in validate and "**Reads** `data/ingested`, `params.yaml` and 6 code file(s)" in validate


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
