"""The KubernetesExecutor's pods, rendered without a cluster (`python -m components.orchestration.kubernetes render`):
only the GPU stage asks for GPUs, a node and tolerations, and only those params name; every pod runs the params'
image with the DVC remote and mounts nothing from the node; a params change or a new dvc.yaml stage shows in
the pods with no code change."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest
import yaml

from components.config import load_params
from components.orchestration.kubernetes import DVC_REMOTE_ENV, main
from tests.conftest import REPO, make_workspace, venv_env

ORCHESTRATION = {"prepare_warm_start", "check_gate", "mark_rejected", "reload_serving", "run_summary"}
GPU_STAGE = "distill"


def add_remote(ws, name: str) -> None:
    """A DVC remote in the workspace's committed config, as an operator adds one (a folder here, S3 for users)."""
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", name, str(ws.parent / f"{name}-remote")],
                   cwd=ws, env=venv_env(), check=True, capture_output=True)


def render(ws, out, *options: str) -> tuple[dict[str, dict], str]:
    """(task_id -> the pod in the file the CLI wrote, read back as an operator would read it; what it printed)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["render", "--out", str(out), "--repo", str(ws), *options])
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))}, printed.getvalue()


def base(pod: dict) -> dict:
    return pod["spec"]["containers"][0]


def env_of(pod: dict) -> dict:
    return {e["name"]: e.get("value") for e in base(pod).get("env", [])}


@pytest.fixture(scope="module")
def default(tmp_path_factory, airflow_home):
    """The repository's params, with the DVC remote `store` that pods need."""
    root = tmp_path_factory.mktemp("k8s_default")
    ws = make_workspace(root / "ws", {"orchestration": {"exchange": {"dvc_remote": "store"}}})
    add_remote(ws, "store")
    return load_params(ws / "params.yaml").orchestration, render(ws, root / "pods")[0]


@pytest.fixture(scope="module")
def changed(tmp_path_factory, airflow_home):
    """Other params (two GPUs on an H100 node pool with a dedicated taint, another image and remote), a stage
    appended to dvc.yaml, and a pod template that asks for CPU and tolerates a batch pool."""
    root = tmp_path_factory.mktemp("k8s_changed")
    ws = make_workspace(root / "ws", {"orchestration": {
        "image": "registry.example.com/llm-srec:2.0.1",
        "exchange": {"dvc_remote": "bucket"},
        "tasks": {GPU_STAGE: {"gpus": 2, "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
                              "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "training",
                                               "effect": "NoSchedule"}]}}}})
    add_remote(ws, "bucket")
    spec = yaml.safe_load((ws / "dvc.yaml").read_text())
    spec["stages"]["report"] = {"cmd": "python -c 'print(1)' > reports/extra.txt",
                                "deps": ["reports/metrics.json"], "outs": ["reports/extra.txt"]}
    (ws / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    template = yaml.safe_load((REPO / "deploy/kubernetes/pod_template.yaml").read_text())
    template["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "2"}}
    template["spec"]["tolerations"] = [{"key": "pool", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}]
    (root / "template.yaml").write_text(yaml.safe_dump(template))
    pods, printed = render(ws, root / "pods", "--pod-template", str(root / "template.yaml"))
    return load_params(ws / "params.yaml").orchestration, pods, set(spec["stages"]), printed


def test_the_gpu_stage_pod_asks_for_what_params_name(default):
    cfg, pods = default
    task = cfg.tasks[GPU_STAGE]
    pod = pods[GPU_STAGE]
    assert task.gpus and task.tolerations  # the repository's params route distill to a GPU
    assert base(pod)["resources"] == {"limits": {task.accelerator: str(task.gpus)}}
    assert pod["spec"]["tolerations"] == task.tolerations
    assert pod["spec"].get("nodeSelector", {}) == task.node_selector


def test_every_task_has_a_pod_and_no_other_asks_for_a_gpu(default):
    cfg, pods = default
    stages = set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    assert set(pods) == stages | ORCHESTRATION
    gpu = cfg.tasks[GPU_STAGE]
    for task_id, pod in pods.items():
        if task_id == GPU_STAGE:
            continue
        assert "resources" not in base(pod), task_id
        assert not any(gpu.accelerator in str(c.get("resources")) for c in pod["spec"]["containers"]), task_id
        assert "tolerations" not in pod["spec"] and "nodeSelector" not in pod["spec"], task_id


def test_every_pod_runs_the_params_image_with_the_dvc_remote_and_nothing_from_the_node(default):
    """The image and the remote come from params; the task runs as the workload of its own task instance, in
    the queue params give it; no volume is the node's or shared (pods exchange data through the remote)."""
    cfg, pods = default
    for task_id, pod in pods.items():
        assert base(pod)["name"] == "base" and base(pod)["image"] == cfg.image, task_id
        assert env_of(pod)[DVC_REMOTE_ENV] == cfg.exchange.dvc_remote == "store", task_id
        assert pod["spec"]["restartPolicy"] == "Never"
        volumes = pod["spec"].get("volumes", [])
        assert not [v for v in volumes if set(v) - {"name", "emptyDir", "configMap", "secret", "projected"}], task_id
        args = base(pod)["args"]
        assert args[:4] == ["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string"]
        workload = json.loads(args[4])
        assert (workload["ti"]["dag_id"], workload["ti"]["task_id"]) == ("llm_srec_retraining", task_id)
        assert workload["ti"]["queue"] == (cfg.tasks[GPU_STAGE].queue if task_id == GPU_STAGE else "default")
        assert workload["dag_rel_path"] == "llm_srec_retraining.py"
        assert pod["metadata"]["labels"]["task_id"] == task_id


def test_params_change_the_pods(changed):
    cfg, pods, _, _ = changed
    gpu = base(pods[GPU_STAGE])
    assert gpu["resources"] == {"limits": {"nvidia.com/gpu": "2"}}
    assert pods[GPU_STAGE]["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert pods[GPU_STAGE]["spec"]["tolerations"] == [
        {"effect": "NoSchedule", "key": "dedicated", "operator": "Equal", "value": "training"}]
    assert {base(p)["image"] for p in pods.values()} == {"registry.example.com/llm-srec:2.0.1"} == {cfg.image}
    assert {env_of(p)[DVC_REMOTE_ENV] for p in pods.values()} == {"bucket"}


def test_a_stage_added_to_dvc_yaml_gets_a_pod(changed):
    _, pods, stages, _ = changed
    assert set(pods) == stages | ORCHESTRATION
    report = pods["report"]
    assert base(report)["image"] == "registry.example.com/llm-srec:2.0.1"
    # The template's CPU request and batch-pool toleration; nothing of the GPU stage's.
    assert base(report)["resources"] == {"requests": {"cpu": "2"}}
    assert [t["key"] for t in report["spec"]["tolerations"]] == ["pool"] and "nodeSelector" not in report["spec"]
    assert json.loads(base(report)["args"][4])["ti"]["task_id"] == "report"


def test_the_template_fields_the_gpu_override_replaces_are_named(changed):
    """The provider merges a pod_override field by field: the GPU pod loses the template's CPU request and
    tolerations (a trap when editing the template); the render says so, and the other pods keep both."""
    _, pods, _, printed = changed
    assert base(pods[GPU_STAGE])["resources"] == {"limits": {"nvidia.com/gpu": "2"}}
    assert [t["key"] for t in pods[GPU_STAGE]["spec"]["tolerations"]] == ["dedicated"]
    assert base(pods["ingest"])["resources"] == {"requests": {"cpu": "2"}}
    assert [t["key"] for t in pods["ingest"]["spec"]["tolerations"]] == ["pool"]
    lines = printed.splitlines()
    assert [lines[i - 1].split()[0] for i, line in enumerate(lines) if "note:" in line] == [GPU_STAGE]
    assert "replaces the template's spec.tolerations, spec.containers[0].resources" in printed


def bare_repo(root, orchestration: dict, remotes: tuple[str, ...] = ()):
    """Just params.yaml and .dvc/config: the checks before the DAG is parsed need no more."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["orchestration"].update(orchestration)
    (root / ".dvc").mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / ".dvc" / "config").write_text("".join(f"['remote \"{r}\"']\n    url = /tmp/{r}\n" for r in remotes))
    return root


@pytest.mark.parametrize("case, expected", [
    ("no remote", "orchestration.exchange.dvc_remote is null"),
    ("unknown remote", "'store', which is not a remote of"),
    ("hostPath", "volume 'checkout' is a host_path"),
    ("no base container", "its first container is 'main', not 'base'"),
    ("misspelled field", "the executor would ignore spec.containers[0].envFrm, spec.nodeSelecter"),
])
def test_a_setup_whose_pods_could_not_work_is_refused(tmp_path, airflow_home, capsys, case, expected):
    remote = {"no remote": None}.get(case, "store")
    repo = bare_repo(tmp_path / "repo", {"exchange": {"dvc_remote": remote}},
                     remotes=("other",) if case == "unknown remote" else ("store",))
    template = yaml.safe_load((REPO / "deploy/kubernetes/pod_template.yaml").read_text())
    if case == "hostPath":
        template["spec"]["volumes"] = [{"name": "checkout", "hostPath": {"path": "/srv/llm-srec"}}]
    if case == "no base container":
        template["spec"]["containers"][0]["name"] = "main"
    if case == "misspelled field":  # the client's models would drop both without a word
        template["spec"]["nodeSelecter"] = {"pool": "cpu"}
        template["spec"]["containers"][0]["envFrm"] = template["spec"]["containers"][0].pop("envFrom")
    (tmp_path / "template.yaml").write_text(yaml.safe_dump(template))
    with pytest.raises(SystemExit):
        main(["render", "--out", str(tmp_path / "pods"), "--repo", str(repo),
              "--pod-template", str(tmp_path / "template.yaml")])
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "pods").exists()
