"""The KubernetesExecutor's pods for the DAG `llm_srec_retraining`: what each task asks of the cluster, from
params.yaml `orchestration`, and a renderer that builds them without a cluster, for operators to review.

    python -m components.orchestration.kubernetes render --out DIR [--repo .] [--pod-template FILE]

writes DIR/<task_id>.yaml for every task of the DAG and prints one line per pod, with a note where a task's
pod_override replaces a field of the template whole (the provider merges field by field). Run it with the Airflow
configuration of the scheduler (AIRFLOW_HOME or AIRFLOW__* variables): the namespace, the pod template and
`pod_mutation_hook` come from there, as they do for the executor.

The DAG gives every task `executor_config(...)` below, built from params:
- the image, `orchestration.image`, on every pod (it wins over `[kubernetes_executor] worker_container_*`);
- `LLMSREC_DVC_REMOTE` = `orchestration.exchange.dvc_remote`: the DVC remote a task pulls its deps from and
  pushes its outs to, since pods share no folder;
- for a stage with `orchestration.tasks.<stage>.gpus`: a limit of `gpus` on `accelerator`, and the stage's
  node selector and tolerations. No other pod gets any of them.

A rendered pod is the one the executor (apache-airflow-providers-cncf-kubernetes 10.5.0,
`AirflowKubernetesScheduler.run_next`) creates for the task's first try: the DAG as the scheduler holds it
(parsed, serialized, read back), the workload the scheduler sends (`ExecuteTask.make`; without the token it signs
for each try), then `PodGenerator.construct_pod`: the pod template, the executor's own fields (name, labels, the
command), the task's `pod_override`, and `pod_mutation_hook`.

Why not `airflow kubernetes generate-dag-yaml`: with Airflow 3.3.2 the provider 10.5.0's command stops at its
import (`cannot import name 'get_dag' from 'airflow.utils.cli'`), and its body builds each pod's command with
`TaskInstance.command_as_list()`, which Airflow 3 removed (a task runs as a workload).
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from components.config import OrchestrationParams, TaskParams, load_params
from components.errors import ConfigError, stage_main
from components.orchestration.exchange import DVC_REMOTE_ENV

if TYPE_CHECKING:
    from kubernetes.client import models as k8s

DAG_ID = "llm_srec_retraining"
#: the repository's pod template, relative to its root
POD_TEMPLATE = Path("deploy/kubernetes/pod_template.yaml")
#: the container the executor runs a task in; its pod_override must name the same one
BASE = "base"
#: Airflow's bundle for `[core] dags_folder`: the path the scheduler's workloads name the DAG file under
BUNDLE = "dags-folder"
#: the label the provider's own renderer gives pods that no scheduler job launched
SCHEDULER_JOB = "worker-config"
#: TaskParams fields that shape the pod, not the Airflow operator
POD_FIELDS = ("gpus", "accelerator", "node_selector", "tolerations")
#: volume kinds a task's pod may use: none shares a folder with another pod or with the node
POD_LOCAL_VOLUMES = ("config_map", "secret", "empty_dir", "projected", "downward_api", "ephemeral")
COMMAND = ["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string"]


def executor_config(cfg: OrchestrationParams, task: TaskParams | None = None) -> dict:
    """A task's `executor_config` under the KubernetesExecutor: {"pod_override": V1Pod} whose container `base`
    runs `cfg.image` with LLMSREC_DVC_REMOTE = `cfg.exchange.dvc_remote` (when set), and, when `task.gpus` > 0,
    has a limit of `task.gpus` on `task.accelerator`, with the pod on `task.node_selector` and
    `task.tolerations`. `task`: the stage's `orchestration.tasks` entry, or None (no GPU).

    Other executors ignore executor_config; without the kubernetes client (a LocalExecutor or Celery install)
    there is nothing to build, and it is {}.
    """
    try:
        from kubernetes.client import models as k8s
    except ImportError:
        return {}
    remote = cfg.exchange.dvc_remote
    container = k8s.V1Container(name=BASE, image=cfg.image,
                                env=[k8s.V1EnvVar(name=DVC_REMOTE_ENV, value=remote)] if remote else None)
    spec = k8s.V1PodSpec(containers=[container])
    if task is not None and task.gpus:
        container.resources = k8s.V1ResourceRequirements(limits={task.accelerator: str(task.gpus)})
        spec.node_selector = dict(task.node_selector) or None
        spec.tolerations = [k8s.V1Toleration(**t) for t in task.tolerations] or None
    return {"pod_override": k8s.V1Pod(spec=spec)}


def check_exchange(repo: Path, cfg: OrchestrationParams) -> None:
    """ConfigError unless `cfg.exchange.dvc_remote` names a remote of `repo`/.dvc/config. Pods share no folder:
    without a remote, no stage could read what the one before it wrote; and the pods have the image's checkout,
    so a remote only in a local or global DVC config (`dvc remote add --local`) does not reach them."""
    from dvc.config import Config

    params = repo / "params.yaml"
    remote = cfg.exchange.dvc_remote
    if not remote:
        raise ConfigError(params, "orchestration.exchange.dvc_remote is null, so pods, which share no folder, "
                                  "could not pass one stage's outputs to the next",
                          "add a remote every pod can reach (`dvc remote add NAME s3://BUCKET/PATH`), commit "
                          ".dvc/config, and name it in orchestration.exchange.dvc_remote")
    known = sorted(Config(dvc_dir=repo / ".dvc", validate=False).load_one("repo").get("remote", {}))
    if remote not in known:
        raise ConfigError(params, f"orchestration.exchange.dvc_remote is {remote!r}, which is not a remote of "
                                  f"{repo / '.dvc' / 'config'} (its remotes: {known or 'none'})",
                          f"`dvc remote add {remote} URL` (no --local: the pods see only the committed "
                          ".dvc/config), or name one of its remotes")


def base_pod(path: Path) -> k8s.V1Pod:
    """The pod of a pod template file, read as the executor reads it (`PodGenerator.deserialize_model_dict`).
    ConfigError: the file is missing or not YAML, is not a Pod, has a key the executor would ignore (a
    misspelled field), its first container is not `base` (the executor puts the task into the first container,
    and the pod_override into the one of that name), or a volume shares a folder (`check_pod`)."""
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    if not path.is_file():
        raise ConfigError(path, "no such pod template file",
                          f"pass --pod-template FILE (the repository's is {POD_TEMPLATE}), or fix "
                          "[kubernetes_executor] pod_template_file")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(path, f"is not YAML ({e})", f"restore it from git ({POD_TEMPLATE})") from None
    if not isinstance(data, dict) or data.get("kind") != "Pod":
        raise ConfigError(path, "is not a Kubernetes Pod (kind: Pod)", f"restore it from git ({POD_TEMPLATE})")
    pod = PodGenerator.deserialize_model_dict(data)
    # The executor reads the template with the client's models, which drop what they do not know, silently.
    if lost := ignored_keys(data, as_dict(pod)):
        raise ConfigError(path, f"the executor would ignore {', '.join(lost)}: not fields of a Kubernetes Pod",
                          "spell them as Kubernetes does (camelCase: nodeSelector, envFrom, ...) or remove them")
    containers = pod.spec.containers if pod.spec else None
    if not containers or containers[0].name != BASE:
        raise ConfigError(path, f"its first container is {containers[0].name if containers else None!r}, not "
                                f"{BASE!r}", f"name the task's container {BASE!r} and put it first")
    check_pod(pod, path)
    return pod


def ignored_keys(data: Any, kept: Any, at: str = "") -> list[str]:
    """Dotted paths of the keys of `data` (YAML as written) that `kept` (the same read into the client's models
    and written back) lacks; keys whose value is null are not counted (the models leave them out too)."""
    if isinstance(data, dict):
        kept = kept if isinstance(kept, dict) else {}
        return [path for key, value in data.items() if value is not None
                for path in ([f"{at}{key}"] if key not in kept else ignored_keys(value, kept[key], f"{at}{key}."))]
    if isinstance(data, list) and isinstance(kept, list):
        return [path for i, (d, k) in enumerate(zip(data, kept, strict=False))
                for path in ignored_keys(d, k, f"{at[:-1]}[{i}].")]
    return []


def check_pod(pod: k8s.V1Pod, source: str | Path) -> None:
    """ConfigError if `pod` has a volume other pods or the node share (hostPath, a PersistentVolumeClaim, NFS,
    ...): the pods of this DAG start from the image's checkout and exchange data only through the DVC remote,
    so a shared folder would hide a missing push, and a hostPath would run a node's checkout, not the image's.
    `source`: what the pod came from, for the message."""
    for volume in (pod.spec.volumes if pod.spec else None) or []:
        kinds = [k for k, v in volume.to_dict().items() if k != "name" and v is not None]
        if shared := [k for k in kinds if k not in POD_LOCAL_VOLUMES]:
            raise ConfigError(source, f"volume {volume.name!r} is a {', '.join(shared)}: a folder pods or the "
                                      "node share, but each task's pod must work from the image and the DVC "
                                      "remote alone", f"remove it (allowed: {', '.join(POD_LOCAL_VOLUMES)})")


def load_dag(repo: Path) -> Any:
    """The DAG in `repo`/dags as the scheduler holds it: parsed as the dag processor parses its bundle, then
    serialized and read back (a pod_override that did not survive serialization is missing here as on the
    cluster). ConfigError: $LLMSREC_REPO names another repository (the DAG would read its params), the DAG
    does not load (its import error), or `repo`/dags has no DAG `llm_srec_retraining`."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    env = os.environ.get("LLMSREC_REPO")
    if env and Path(env).resolve() != repo.resolve():
        raise ConfigError("LLMSREC_REPO", f"is {env}, so the DAG would read that repository's params, not "
                                          f"{repo}'s", f"unset it, or pass --repo {env}")
    dags = (repo / "dags").resolve()
    bag = DagBag(dag_folder=dags, bundle_path=dags, bundle_name=BUNDLE)
    if bag.import_errors:
        file, error = next(iter(bag.import_errors.items()))
        raise ConfigError(dags / file, f"the DAG does not load: {error.strip().splitlines()[-1]}",
                          "fix it (`python dags/llm_srec_retraining.py` shows the whole error)")
    if DAG_ID not in bag.dags:
        raise ConfigError(dags, f"holds no DAG {DAG_ID} (found: {sorted(bag.dags) or 'none'})",
                          "pass --repo the repository root")
    return DagSerialization.from_dict(DagSerialization.to_dict(bag.dags[DAG_ID]))


def render(dag: Any, template: Path, run_id: str | None = None) -> dict[str, k8s.V1Pod]:
    """task_id -> the pod the KubernetesExecutor creates for the task's first try in run `run_id` (default: a
    manual run now), for every task of `dag` (as `load_dag` returns it). `template`: the pod template of a task
    whose executor_config names none (the executor's `[kubernetes_executor] pod_template_file`).

    The steps of `AirflowKubernetesScheduler.run_next` (provider 10.5.0), cluster call aside: the command that
    runs the scheduler's workload, the template, `PodGenerator.construct_pod` with the executor's namespace and
    image, the task's pod_override, `pod_mutation_hook`. The workload has fresh ids and no token, as a new run
    has until the scheduler signs one. ConfigError: a bad template (`base_pod`), or a pod that shares a
    folder (`check_pod`).
    """
    from airflow.executors.workloads import BundleInfo, ExecuteTask
    from airflow.models.taskinstance import TaskInstance, uuid7
    from airflow.providers.cncf.kubernetes.kube_config import KubeConfig
    from airflow.providers.cncf.kubernetes.kubernetes_helper_functions import create_unique_id
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    kube = KubeConfig()
    run_id = run_id or f"manual__{datetime.now(UTC).isoformat()}"
    version = uuid7()  # one DAG version serves the whole run
    templates: dict[Path, k8s.V1Pod] = {}
    pods = {}
    for task in dag.tasks:
        config = task.executor_config or {}
        path = Path(config.get("pod_template_file") or template)
        if path not in templates:
            templates[path] = base_pod(path)
        ti = TaskInstance(task=task, run_id=run_id, map_index=-1, dag_version_id=version)
        ti.try_number = 1  # the scheduler counts the try when it queues the task
        workload = ExecuteTask.make(ti, dag_rel_path=Path(dag.relative_fileloc), bundle_info=BundleInfo(name=BUNDLE))
        pod = PodGenerator.construct_pod(
            dag_id=dag.dag_id, task_id=task.task_id, pod_id=create_unique_id(dag.dag_id, task.task_id),
            try_number=ti.try_number, kube_image=kube.kube_image, date=None,
            args=[*COMMAND, workload.model_dump_json()], pod_override_object=PodGenerator.from_obj(config),
            base_worker_pod=templates[path], namespace=kube.kube_namespace, scheduler_job_id=SCHEDULER_JOB,
            run_id=run_id, map_index=-1, with_mutation_hook=True)
        check_pod(pod, f"task {task.task_id}'s pod (pod_override or pod_mutation_hook)")
        pods[task.task_id] = pod
    return pods


def replaced(template: k8s.V1Pod, override: k8s.V1Pod | None) -> list[str]:
    """Paths of the template's fields that a task's pod_override replaces whole (`PodGenerator.reconcile_pods`
    merges field by field and joins only the lists below): e.g. a template's cpu requests are gone from a pod
    whose override sets a GPU limit. In Kubernetes' spelling: `spec.tolerations`, `spec.containers[0].resources`."""
    if override is None or override.spec is None or template.spec is None:
        return []
    pairs = [("spec.", template.spec, override.spec, {"containers", "init_containers", "volumes"})]
    if template.spec.containers and override.spec.containers:
        pairs.append(("spec.containers[0].", template.spec.containers[0], override.spec.containers[0],
                      {"name", "env", "env_from", "volume_mounts", "ports", "volume_devices"}))
    return [at + type(base).attribute_map[f] for at, base, over, joined in pairs for f in type(base).openapi_types
            if f not in joined and getattr(base, f) and getattr(over, f)]


def as_dict(pod: k8s.V1Pod) -> dict:
    """The pod as Kubernetes' own YAML/JSON has it (camelCase keys, unset fields left out)."""
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(pod)


def summary(pod: dict) -> str:
    """One line for a pod from `as_dict`: image, accelerator limits, node selector, tolerations, DVC remote."""
    spec, base = pod["spec"], pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in base.get("env", [])}
    limits = base.get("resources", {}).get("limits") or "-"
    tolerations = [t.get("key") or t.get("operator") for t in spec.get("tolerations", [])] or "-"
    return (f"image={base.get('image')} limits={limits} node_selector={spec.get('nodeSelector') or '-'} "
            f"tolerations={tolerations} {DVC_REMOTE_ENV}={env.get(DVC_REMOTE_ENV, '-')}")


def configured_template() -> Path | None:
    """`[kubernetes_executor] pod_template_file` of the Airflow configuration in effect, or None."""
    from airflow.providers.cncf.kubernetes.kube_config import KubeConfig

    path = KubeConfig().pod_template_file
    return Path(path) if path else None


@stage_main("kubernetes")
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["render"])
    ap.add_argument("--out", type=Path, required=True, help="folder for one <task_id>.yaml per task")
    ap.add_argument("--repo", type=Path, default=Path("."), help="the repository root (default: here)")
    ap.add_argument("--pod-template", type=Path, default=None,
                    help=f"default: [kubernetes_executor] pod_template_file, else the repository's {POD_TEMPLATE}")
    ap.add_argument("--run-id", default=None, help="the run the pods belong to (default: a manual run now)")
    args = ap.parse_args(argv)
    repo = args.repo.resolve()
    cfg = load_params(repo / "params.yaml").orchestration
    check_exchange(repo, cfg)
    template = args.pod_template or configured_template() or repo / POD_TEMPLATE
    base = base_pod(template)  # a bad template fails before the DAG is parsed
    dag = load_dag(repo)
    pods = render(dag, template, run_id=args.run_id)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"pod template: {template}")
    for task_id, pod in pods.items():
        data = as_dict(pod)
        (args.out / f"{task_id}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        print(f"{task_id:<20} {summary(data)}")
        config = dag.get_task(task_id).executor_config or {}
        if "pod_template_file" not in config and (lost := replaced(base, config.get("pod_override"))):
            print(f"{'':<20} note: its pod_override replaces the template's {', '.join(lost)}")
    print(f"{len(pods)} pods in {args.out}/")


if __name__ == "__main__":
    main()
