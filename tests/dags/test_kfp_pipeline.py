"""Kubeflow Pipelines: dvc.yaml's stages as a KFP v2 pipeline (components/orchestration/kfp.py).

The compiled IR is read back and checked against dvc.yaml and params.yaml (one component per stage wired
as DVC wires them, artifacts only, the GPU request, the gate's condition on package). The end-to-end run
is kfp.local's SubprocessRunner on the embedded synthetic default, shrunk with the DAG test's tiny
params: every stage runs in a workspace of its own, the gate promotes and package puts the model in a
temporary BentoML store; then the gate alone runs again on the first run's artifacts under a floor no
model can pass, and package does not run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kfp import dsl

from components.config import load_params
from components.errors import ConfigError, DataError
from components.orchestration import graph, kfp, kfp_step
from tests.conftest import REPO, make_workspace, venv_env
from tests.dags.test_dag_e2e import small_params

CONDITION = "inputs.parameter_values['pipelinechannel--gate-Output'] != 'rejected'"


def compile_ir(repo: Path, out: Path, **kwargs) -> dict:
    kfp.compile_pipeline(kfp.build_pipeline(repo, **kwargs), out)
    return yaml.safe_load(out.read_text())


def tasks_of(ir: dict) -> dict[str, dict]:
    """Every task of the pipeline that runs a stage, by task name, with `in_condition` and its inputs
    resolved to (producer task, output name) through the condition's sub-DAG."""
    root = ir["root"]["dag"]["tasks"]
    out = {}
    for name, t in root.items():
        comp = ir["components"][t["componentRef"]["name"]]
        if "dag" not in comp:
            out[name] = {**t, "in_condition": None, "from": _sources(t, {})}
            continue
        outer = {k: (v["taskOutputArtifact"]["producerTask"], v["taskOutputArtifact"]["outputArtifactKey"])
                 for k, v in t["inputs"].get("artifacts", {}).items()}
        for inner, it in comp["dag"]["tasks"].items():
            out[inner] = {**it, "in_condition": name, "from": _sources(it, outer)}
    return out


def _sources(task: dict, outer: dict) -> dict[str, tuple[str, str]]:
    found = {}
    for k, v in task.get("inputs", {}).get("artifacts", {}).items():
        if "taskOutputArtifact" in v:
            found[k] = (v["taskOutputArtifact"]["producerTask"], v["taskOutputArtifact"]["outputArtifactKey"])
        else:  # through the condition: the sub-DAG's input, which the condition task takes from a task
            found[k] = outer[v["componentInputArtifact"]]
    return found


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    return compile_ir(REPO, out), out.read_text()


def test_one_component_per_stage_wired_as_dvc_wires_them(compiled):
    ir, _ = compiled
    stages = graph.pipeline_stages(REPO)
    steps = {st.stage.address: st for st in kfp.plan(stages, load_params(REPO / "params.yaml").orchestration.gate_report)}
    tasks = tasks_of(ir)
    assert sorted(tasks) == sorted(kfp.task_name(st) for st in steps.values())
    for s in stages:
        task = tasks[kfp.task_name(steps[s.address])]
        # Every input artifact is an output of one of the stage's DVC upstream stages, at the path it depends on,
        # and every upstream stage feeds it: the edges are DVC's, so the order is DVC's topological order.
        fed_by = {producer for producer, _ in task["from"].values()}
        assert fed_by == {kfp.task_name(steps[u]) for u in s.upstream}, s.address
        for name, (_, key) in task["from"].items():
            path = steps[s.address].inputs[name]
            assert key == name and any(d == path or d.startswith(path + "/") or path.startswith(d + "/")
                                       for d in s.deps), (s.address, name)
        comp = ir["components"][task["componentRef"]["name"]]
        declared = set(comp["outputDefinitions"]["artifacts"])
        assert declared == {kfp.artifact_name(o) for o in s.outs}, s.address
        # The component runs the stage's own command, taken from dvc.yaml.
        executor = ir["deploymentSpec"]["executors"][comp["executorLabel"]]["container"]
        assert repr(s.cmd) in executor["command"][-1], s.address
    assert set(tasks["ingest-batches"]["from"]) == set()
    assert tasks["package"]["from"]["data_prepared"] == ("prepare", "data_prepared")


def test_distill_asks_for_the_gpus_of_params_and_nothing_else_does(compiled):
    ir, _ = compiled
    cfg = load_params(REPO / "params.yaml").orchestration
    routing = cfg.tasks["distill"]
    executors = ir["deploymentSpec"]["executors"]
    assert executors["exec-distill"]["container"]["resources"]["accelerator"] == {
        "type": routing.accelerator, "count": str(routing.gpus),
        "resourceType": routing.accelerator, "resourceCount": str(routing.gpus)}
    assert [e for e, x in executors.items() if "resources" in x["container"]] == ["exec-distill"]
    assert {x["container"]["image"] for x in executors.values()} == {cfg.image}
    for name, t in tasks_of(ir).items():
        assert t["retryPolicy"]["maxRetryCount"] == cfg.retries, name
        assert t["retryPolicy"]["backoffDuration"] == f"{cfg.retry_delay_seconds}s", name
        assert not t.get("cachingOptions", {}).get("enableCache"), name


def test_package_runs_only_when_the_gate_does_not_reject(compiled):
    ir, _ = compiled
    tasks = tasks_of(ir)
    conditions = {t["in_condition"] for t in tasks.values()} - {None}
    (condition,) = conditions
    assert ir["root"]["dag"]["tasks"][condition]["triggerPolicy"]["condition"] == CONDITION
    assert [n for n, t in tasks.items() if t["in_condition"]] == ["package"]
    assert tasks["report"]["in_condition"] is None  # the run report is written whatever the gate decides
    assert "gate" in ir["root"]["dag"]["tasks"][condition]["dependentTasks"]
    gate = ir["components"]["comp-gate"]
    assert gate["outputDefinitions"]["parameters"] == {"Output": {"parameterType": "STRING"}}
    assert ir["root"]["outputDefinitions"]["parameters"] == {"Output": {"parameterType": "STRING"}}


def test_no_shared_paths(compiled):
    ir, text = compiled
    # Only the code's location is a path, a parameter defaulting to the image's; no volume, no host path.
    assert ir["root"]["inputDefinitions"]["parameters"]["code"]["defaultValue"] == kfp.IMAGE_CODE
    assert str(REPO) not in text and "/tmp" not in text
    assert not re.search(r"(?i)volume|pvc|hostPath|mountPath", text)
    for name, t in tasks_of(ir).items():
        assert set(t["inputs"]["parameters"]) == set(kfp.PARAMETERS), name  # the rest comes as artifacts


def test_a_new_stage_in_dvc_yaml_is_a_new_component(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    dvc = yaml.safe_load((ws / "dvc.yaml").read_text())
    # A report on the metrics (beside the gate) and a notice after package (released with it).
    dvc["stages"]["report"] = {"cmd": "python -c 'print(1)' > reports/report.txt",
                               "deps": ["reports/metrics.json"], "outs": ["reports/report.txt"]}
    dvc["stages"]["notice"] = {"cmd": "cp reports/package.json reports/notice.json",
                               "deps": ["reports/package.json"], "outs": ["reports/notice.json"]}
    (ws / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    tasks = tasks_of(compile_ir(ws, tmp_path / "p.yaml"))
    assert tasks["report"]["from"] == {"reports_metrics_json": ("evaluate", "reports_metrics_json")}
    assert tasks["report"]["in_condition"] is None
    assert tasks["notice"]["from"] == {"reports_package_json": ("package", "reports_package_json")}
    assert tasks["notice"]["in_condition"] == tasks["package"]["in_condition"]


def test_bad_requests_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="not a dvc.yaml stage"):
        kfp.build_pipeline(REPO, reuse={}, start="nonesuch")
    with pytest.raises(ConfigError, match="not the gate or upstream of it.*start from one of"):
        kfp.build_pipeline(REPO, reuse={}, start="package")
    with pytest.raises(ConfigError, match="--reuse has no artifact"):
        kfp.build_pipeline(REPO, reuse={}, start="gate")
    with pytest.raises(ConfigError, match="written by no dvc.yaml stage"):
        kfp.plan(graph.pipeline_stages(REPO), "reports/nothing.json")
    with pytest.raises(DataError, match="holds no artifacts"):
        kfp.local_artifacts(tmp_path, REPO)
    with pytest.raises(ConfigError, match="holds no dvc.yaml"):
        kfp_step.code_files(tmp_path)


def test_a_step_names_what_it_lacks_and_a_stale_pipeline(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    prepare = next(s for s in graph.pipeline_stages(ws) if s.address == "prepare")
    out = dsl.Artifact(uri=str(tmp_path / "out"))
    # Its upstream artifacts were not given: the step stops before running anything, naming them.
    with pytest.raises(DataError, match="data/validated, reports/validation.json: stage 'prepare' depends on it"):
        kfp_step.run_step(str(ws), "", "prepare", prepare.cmd, list(prepare.deps), {}, {"data/prepared": out})
    with pytest.raises(ConfigError, match="not the one this pipeline was compiled from"):
        kfp_step.run_step(str(ws), "", "prepare", prepare.cmd + " --extra", list(prepare.deps), {}, {})
    assert not Path(out.path).exists()


def local_run(ws: Path, root: Path, bentoml: Path, *extra: str) -> tuple[Path, str, str]:
    """`python -m components.orchestration.kfp --run-local` in `ws`, as an operator runs it."""
    env = {**venv_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "components.orchestration.kfp", "--run-local", "--out",
                           str(root.parent / "pipeline.yaml"), "--pipeline-root", str(root), "--bentoml-home", str(bentoml),
                           *extra], cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    run_dir = Path(re.search(r"^local run: (.+)$", log, re.M).group(1))
    return run_dir, re.search(r"^gate decision: (\w+)$", log, re.M).group(1), log


@pytest.mark.slow
def test_kfp_local_run_end_to_end(tmp_path, tiny_llm_dir):
    ws = make_workspace(tmp_path / "ws", small_params(tiny_llm_dir))
    bentoml, root = tmp_path / "bentoml", tmp_path / "kfp"
    stages = graph.pipeline_stages(ws)
    steps = kfp.plan(stages, "reports/gate.json")

    # 1. Every stage runs in its own workspace; the gate promotes; package stores the model.
    run1, decision, _ = local_run(ws, root, bentoml)
    assert decision == "promoted"
    for st in steps:
        task_dir = run1 / kfp.task_name(st)
        for name in st.outputs:
            assert (task_dir / name).exists(), f"{st.stage.address} did not hand on {name}"
    registry = json.loads((bentoml / "registry" / "llmsrec.json").read_text())
    package = json.loads((run1 / "package" / "reports_package_json").read_text())
    assert package["decision"] == "promoted" and registry["production"] == package["tag"]
    # dvc.lock travelled with the artifacts: the model carries the data version prepare's component recorded.
    prepared = next(st for st in steps if st.stage.address == "prepare")
    lock = json.loads(json.loads((run1 / "prepare" / "executor_output.json").read_text())["artifacts"]
                      ["data_prepared"]["artifacts"][0]["metadata"][kfp_step.LOCK_KEY])
    version = next(o["md5"] for o in lock["entry"]["outs"] if o["path"] == "data/prepared")
    model_yaml = next((bentoml / "models" / "llmsrec").glob("*/model.yaml")).read_text()
    assert f"data_version: {version}" in model_yaml and prepared.outputs["data_prepared"] == "data/prepared"
    # Nothing was written into the code the components copied: they shared no folder.
    assert not (ws / "data").exists() and not (ws / "models" / "sasrec").exists()
    assert not (ws / "reports" / "gate.json").exists()

    # 2. The gate alone, again, on run 1's artifacts, under a floor no model passes: rejected, no package.
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["gate"]["min_ndcg_at_10"] = 1.01
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run2, decision, log = local_run(ws, root, bentoml, "--reuse", str(run1), "--from", "gate")
    assert decision == "rejected"
    # package did not run; the run report did, and says why
    assert sorted(p.name for p in run2.iterdir() if p.is_dir()) == ["gate", "report"]
    assert "Run report: llmsrec rejected" in (run2 / "report" / "reports_run_report_html").read_text()
    assert "ndcg@10_floor" in json.loads((run2 / "gate" / "reports_gate_json").read_text())["reason"]
    after = json.loads((bentoml / "registry" / "llmsrec.json").read_text())
    assert after["production"] == registry["production"] and after["events"][-1]["action"] == "reject"
