"""`python -m components.orchestration.kfp`: dvc.yaml's pipeline as a Kubeflow Pipelines v2 pipeline.

    python -m components.orchestration.kfp                  # compile: reports/kfp/llm_srec_pipeline.yaml
    python -m components.orchestration.kfp --run-local      # compile, and run it here with kfp.local
    python -m components.orchestration.kfp --run-local --reuse reports/kfp/local/<run> --from gate

The stages are read from dvc.yaml with DVC's own API (components/orchestration/graph.py, as the Airflow DAG
reads them), so adding a stage to dvc.yaml adds a component, as it adds a task to the DAG:

- one lightweight Python component per stage, created in topological order, whose code is a call to
  `kfp_step.run_step`: a fresh workspace with the code the image holds, the stage's inputs put in place, the
  stage's own command (`stage.cmd`, run by `dvc repro -s` as the DAG's task runs it), its outputs copied out
  with the stage's dvc.lock entry (components/orchestration/kfp_step.py);
- artifacts between components, no shared filesystem: each output of a stage (outs, metrics, plots) is an
  output artifact named after its path (`data/prepared` -> `data_prepared`); each upstream output a stage
  depends on is an input artifact of the same name, wired to the upstream task's output;
- routing from params.yaml `orchestration.tasks` (as the DAG's): a stage with `gpus` asks for that many of
  its `accelerator` (`set_accelerator_type`, `set_accelerator_limit`); `retries` and `retry_delay_seconds`
  become each task's retry policy; every component runs `orchestration.image`. `node_selector` and
  `tolerations` need the kfp-kubernetes extension (not installed): on GKE the accelerator type alone picks
  the GPU node pool; elsewhere `kfp.kubernetes.add_node_selector` / `add_toleration` would apply them;
- the gate: the stage that writes `orchestration.gate_report` returns the decision it recorded (read with
  components/serving/decision.py), and every stage downstream of it (`package`) runs inside
  `dsl.If(decision != 'rejected')`: only when the gate promoted, or released a first model as provisional.
  The run report's stage (`orchestration.run_report`) runs outside it, on every judged run, as in the DAG.
  The pipeline's output is the decision.

Pipeline parameters: `code`, where the component finds the repository's code (the image's copy, `/app` by
default; `--run-local` passes this checkout, standing in for the image), and `bentoml_home`, the BentoML
store the gate reads the production model from and `package` writes to ('' = the environment's
BENTOML_HOME). The store is outside the pipeline, as it is outside DVC: a cluster mounts it at the same path
in the gate's and package's pods (a volume or a bucket), and serving loads production from it.

KFP's cache is off for every task: its key is the image tag and the upstream artifacts' identities, not the
code or data they hold, and stages act outside their artifacts (the landing zone, the BentoML store).

What stays outside: the landing zone. `ingest_batches` runs in its fresh workspace, whose `data/incoming`
(the image's) is empty, so it hands on an empty batch store and the pipeline trains on `data.source` as
params.yaml sets it. Batches landed for the Airflow path do not reach a KFP run: that would take the
landing zone on shared storage (a bucket) and the last run's store passed in (an importer of its
`data_batches`), which is not built here. The warm start stays outside too: `models/warm_start/{sasrec,llmsrec}` hold their tracked READMEs alone (the
DAG's `prepare_warm_start` task has no KFP counterpart), so both models train from scratch, and a retried task starts its stage over (the
resume state lives in the pod's workspace).

Why the component code is generated: a lightweight component is the source text of one function whose
signature declares its artifacts, and each stage has its own. The text built here is that signature (names
checked to be identifiers, paths and the command as `repr` literals) around one call into kfp_step; it is
loaded from a file, as KFP's own executor loads it in the container, so that kfp derives the interface from
the exact text it ships.
"""

from __future__ import annotations

import argparse
import importlib.util
import keyword
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Absolute imports: `kfp` here is the Kubeflow package, never this module (Python 3 has no implicit relative
# imports, and `python -m` puts the repository root, not this folder, on sys.path).
from kfp import compiler, dsl, local
from kfp.dsl.utils import maybe_rename_for_k8s

from components.config import OrchestrationParams, load_params
from components.errors import ConfigError, DataError, stage_main
from components.io import read_json
from components.orchestration import graph, kfp_step

PIPELINE_NAME = "llm-srec-pipeline"
DEFAULT_OUT = Path("reports/kfp/llm_srec_pipeline.yaml")
DEFAULT_LOCAL_ROOT = Path("reports/kfp/local")
#: where the image holds the repository (its working directory): the default of the `code` parameter
IMAGE_CODE = "/app"
#: pipeline parameters every component takes; no artifact may be named like them
PARAMETERS = ("code", "bentoml_home")


@dataclass(frozen=True)
class Step:
    """One stage as one component: its function name and its artifacts (artifact name -> repo path)."""

    stage: graph.Stage
    function: str
    inputs: dict[str, str]      # upstream outputs this stage depends on
    producers: dict[str, str]   # input artifact name -> the upstream stage's address
    outputs: dict[str, str]     # this stage's outs, metrics and plots
    decides: bool               # writes the gate report: returns the decision


def artifact_name(path: str) -> str:
    """`data/prepared` -> `data_prepared`, `reports/per_user.parquet` -> `reports_per_user_parquet`."""
    name = re.sub(r"\W+", "_", path).strip("_")
    return f"p_{name}" if not name or name[0].isdigit() or keyword.iskeyword(name) else name


def plan(stages: list[graph.Stage], gate_report: str) -> list[Step]:
    """The components of `stages` (topological order, as graph.pipeline_stages returns them).

    Raises ConfigError when no stage writes `gate_report` (nothing could be released), or when two paths or
    two stages map to one name."""
    if graph.writer_of(stages, gate_report) is None:
        raise ConfigError("params.yaml", f"orchestration.gate_report ({gate_report}) is written by no dvc.yaml "
                          "stage, so no run could ever be judged or released",
                          "point it at the gate stage's report (reports/gate.json), or restore the gate stage")
    by_address = {s.address: s for s in stages}
    steps, functions = [], set()
    for s in stages:
        function = artifact_name(s.task_id)
        if function in functions:
            raise ConfigError("dvc.yaml", f"two stages map to the component {function!r}", "rename one of them")
        functions.add(function)
        inputs, producers = {}, {}
        for up in s.upstream:
            for out in by_address[up].outs:
                # An upstream output the stage reads, or a folder the stage reads that holds it.
                if any(d == out or d.startswith(out.rstrip("/") + "/") or out.startswith(d.rstrip("/") + "/")
                       for d in s.deps):
                    inputs[artifact_name(out)] = out
                    producers[artifact_name(out)] = up
        outputs = {artifact_name(o): o for o in s.outs}
        names = [*PARAMETERS, *inputs, *outputs]
        if clash := sorted({n for n in names if names.count(n) > 1}):
            raise ConfigError("dvc.yaml", f"stage {s.address!r}: the paths of its deps and outs map to the same "
                              f"artifact names {clash}", "rename one of the paths")
        steps.append(Step(s, function, inputs, producers, outputs,
                          decides=any(gate_report == o or gate_report.startswith(o.rstrip("/") + "/") for o in s.outs)))
    return steps


def component_source(step: Step, gate_report: str) -> str:
    """The Python source of the step's component function (see the module's docstring for why it is text)."""
    for name in (step.function, *step.inputs, *step.outputs):
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ConfigError("dvc.yaml", f"{name!r} is not a Python identifier", "rename the stage or path")
    params = [f"{p}: str" for p in PARAMETERS]
    params += [f"{n}: Input[Artifact]" for n in step.inputs] + [f"{n}: Output[Artifact]" for n in step.outputs]
    returns = " -> str" if step.decides else ""
    inputs = ", ".join(f"{p!r}: {n}" for n, p in step.inputs.items())
    outputs = ", ".join(f"{p!r}: {n}" for n, p in step.outputs.items())
    s = step.stage
    # sys.path: the step's helper comes from the code it runs (the image's), not from the component's folder.
    return (f"def {step.function}({', '.join(params)}){returns}:\n"
            f"    import sys\n"
            f"    sys.path.insert(0, code)\n"
            f"    from {kfp_step.__name__} import {kfp_step.run_step.__name__}\n"
            f"    return {kfp_step.run_step.__name__}(\n"
            f"        code, bentoml_home, {s.address!r}, {s.cmd!r}, {list(s.deps)!r},\n"
            f"        {{{inputs}}},\n"
            f"        {{{outputs}}},\n"
            f"        {gate_report if step.decides else None!r})\n")


def make_component(step: Step, gate_report: str, image: str, folder: Path):
    """The step's lightweight component, running in `image`; its source is written to `folder` and imported
    from there (kfp reads a component's source with `inspect.getsource`)."""
    path = folder / f"{step.function}.py"
    path.write_text("from kfp.dsl import *\nfrom typing import *\n\n\n" + component_source(step, gate_report))
    spec = importlib.util.spec_from_file_location(f"llmsrec_kfp_{step.function}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # install_kfp_package=False: the image holds kfp (constraints.txt), and a local run must not pip-install.
    return dsl.component(getattr(module, step.function), base_image=image, install_kfp_package=False)


def task_name(step: Step) -> str:
    """The step's task name in the IR and its folder in a local run: kfp's name for its component."""
    return maybe_rename_for_k8s(step.function)


def _route(task, stage: graph.Stage, cfg: OrchestrationParams) -> None:
    routing = cfg.tasks.get(stage.address) or cfg.tasks.get(stage.task_id)
    task.set_display_name(stage.address).set_caching_options(False)
    if routing is not None and routing.gpus:
        task.set_accelerator_type(routing.accelerator).set_accelerator_limit(routing.gpus)
    retries = routing.retries if routing is not None and routing.retries is not None else cfg.retries
    if retries:
        task.set_retry(num_retries=retries, backoff_duration=f"{cfg.retry_delay_seconds}s", backoff_factor=2.0)


def build_pipeline(repo: Path, code: str = IMAGE_CODE, reuse: Mapping[str, Mapping[str, Any]] | None = None,
                   start: str | None = None):
    """The KFP pipeline of `repo`'s dvc.yaml and params.yaml (`orchestration`), with `code` as the default of
    its `code` parameter.

    `start` (a stage address) with `reuse` (repo path -> {uri, metadata}, see `local_artifacts`): run `start` and
    every stage downstream of it; the others' outputs are imported from `reuse` (`dsl.importer`), as
    `dvc repro -f --downstream START` reuses what is in the workspace. `start` must be the gate or upstream of
    it, since the release condition is this run's gate decision. Raises ConfigError on a bad `start` or a
    reused output missing from `reuse`."""
    repo = Path(repo).resolve()
    cfg = load_params(repo / "params.yaml").orchestration
    stages = graph.pipeline_stages(repo)
    steps = plan(stages, cfg.gate_report)
    gate = next(st for st in steps if st.decides)
    # What the gate releases runs under the condition; the run report (orchestration.run_report) runs either way.
    released = ({s.address for s in graph.downstream(stages, gate.stage)}
                - {s.address for s in graph.judged_stages(stages, gate.stage, cfg.run_report)})
    run = list(steps)
    if start is not None:
        root = next((s for s in stages if s.address == start), None)
        again = {start} | ({s.address for s in graph.downstream(stages, root)} if root else set())
        if root is None or gate.stage.address not in again:
            feeding = [s.address for s in stages if s is gate.stage or gate.stage in graph.downstream(stages, s)]
            raise ConfigError(start, "is not a dvc.yaml stage" if root is None else "is not the gate or upstream of it",
                              f"start from one of {feeding}: the release condition reads this run's gate decision")
        run = [st for st in steps if st.stage.address in again]
    with tempfile.TemporaryDirectory(prefix="llmsrec-kfp-") as tmp:
        components = {st.stage.address: make_component(st, cfg.gate_report, cfg.image, Path(tmp)) for st in run}

    def pipeline(code: str = code, bentoml_home: str = "") -> str:
        produced: dict[str, Any] = {}   # repo path -> the channel of the artifact that holds it

        def source(path: str):
            if path not in produced:
                found = (reuse or {}).get(path)
                if found is None:
                    raise ConfigError(path, f"is needed by the stages from {start!r} on, and --reuse has no "
                                      "artifact for it", "reuse a run that produced it, or start earlier")
                # With its metadata: the producing stage's dvc.lock entry travels on (kfp_step.LOCK_KEY).
                produced[path] = dsl.importer(artifact_uri=found["uri"], artifact_class=dsl.Artifact, reimport=False,
                                              metadata=found["metadata"]).set_display_name(f"{path} (reused)").output
            return produced[path]

        def add(st: Step):
            task = components[st.stage.address](code=code, bentoml_home=bentoml_home,
                                                **{n: source(p) for n, p in st.inputs.items()})
            _route(task, st.stage, cfg)
            produced.update({p: task.outputs[n] for n, p in st.outputs.items()})
            return task

        tasks = {st.stage.address: add(st) for st in run if st.stage.address not in released}
        decision = tasks[gate.stage.address]
        # The DAG's rule (release.gate_decision): anything but a rejection is released. The gate's single, unnamed
        # output: kfp.local resolves a condition on a task's output only when it is the default `Output`.
        with dsl.If(decision.outputs["Output"] != "rejected", name="gate-released"):
            for st in run:
                if st.stage.address in released:
                    add(st)
        return decision.outputs["Output"]

    # kfp reads the types from the signature, and this module's annotations are strings (`from __future__`).
    pipeline.__annotations__ = {"code": str, "bentoml_home": str, "return": str}
    return dsl.pipeline(pipeline, name=PIPELINE_NAME, description="LLM-SRec retraining: dvc.yaml's stages as "
                        "components; the gate's decision releases the model")


def compile_pipeline(pipeline, out: Path) -> Path:
    """Write the pipeline's IR YAML to `out` (folders made); returns `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(out))
    return out


def run_local(pipeline, code: Path, pipeline_root: Path, bentoml_home: str = "") -> dict[str, Any]:
    """Run the pipeline on this machine with kfp.local's SubprocessRunner (each component a subprocess of this
    interpreter; no Docker, so resources, retries and caching are ignored). Returns {run_dir, decision}: the
    run's folder under `pipeline_root`, holding one folder per task with its output artifacts. Raises
    RuntimeError naming the failed task when one fails."""
    pipeline_root = Path(pipeline_root).resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    before = set(pipeline_root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    with warnings.catch_warnings():
        # kfp warns for every task whose image is not named `python...`: here the image stands for this
        # interpreter, which is what the SubprocessRunner runs.
        warnings.filterwarnings("ignore", message=".*non-Python base image", category=RuntimeWarning)
        task = pipeline(code=str(Path(code).resolve()), bentoml_home=bentoml_home)
    (run_dir,) = [p for p in pipeline_root.iterdir() if p not in before and p.name.startswith(PIPELINE_NAME)]
    return {"run_dir": run_dir, "decision": task.output}


def local_artifacts(run_dir: Path, repo: Path) -> dict[str, dict[str, Any]]:
    """repo path -> {uri, metadata} of the artifact that holds it, for every stage output that a local run
    (`run_local`) wrote in `run_dir` (each task's folder holds its artifacts and `executor_output.json`, which
    records their metadata): what `build_pipeline(reuse=...)` takes. Raises DataError when `run_dir` holds no
    task of this pipeline."""
    cfg = load_params(Path(repo) / "params.yaml").orchestration
    found = {}
    for st in plan(graph.pipeline_stages(Path(repo)), cfg.gate_report):
        record = Path(run_dir) / task_name(st) / "executor_output.json"
        artifacts = read_json(record).get("artifacts", {}) if record.is_file() else {}
        for name, path in st.outputs.items():
            for a in artifacts.get(name, {}).get("artifacts", []):
                if Path(a["uri"]).exists():
                    found[path] = {"uri": a["uri"], "metadata": a.get("metadata") or {}}
    if not found:
        raise DataError(run_dir, "holds no artifacts of this pipeline's tasks",
                        f"pass the folder of a finished local run (under {DEFAULT_LOCAL_ROOT})")
    return found


@stage_main("kfp")
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=Path("."), help="the repository whose dvc.yaml and params.yaml "
                    "are compiled (default: here)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the IR YAML (default {DEFAULT_OUT}, ignored "
                    "by git)")
    ap.add_argument("--code", default=IMAGE_CODE, help=f"where the image holds the repository (default {IMAGE_CODE})")
    ap.add_argument("--run-local", action="store_true", help="also run it here with kfp.local (SubprocessRunner), "
                    "the code taken from --repo")
    ap.add_argument("--pipeline-root", type=Path, default=DEFAULT_LOCAL_ROOT,
                    help=f"where a local run keeps its artifacts (default {DEFAULT_LOCAL_ROOT})")
    ap.add_argument("--bentoml-home", default="", help="the BentoML store of a local run (default: $BENTOML_HOME)")
    ap.add_argument("--reuse", type=Path, help="a previous local run's folder whose artifacts stand in for the "
                    "stages before --from")
    ap.add_argument("--from", dest="start", help="with --reuse: the first stage to run again (the gate or earlier)")
    args = ap.parse_args(argv)
    if (args.reuse is None) != (args.start is None):
        raise ConfigError("--reuse/--from", "one was given without the other", "give both, or neither")
    if args.reuse is not None and not args.run_local:
        raise ConfigError("--reuse", "names a local run's artifacts, which only a local run can read",
                          "add --run-local")
    reuse = local_artifacts(args.reuse, args.repo) if args.reuse is not None else None
    pipeline = build_pipeline(args.repo, code=args.code, reuse=reuse, start=args.start)
    print(f"compiled: {compile_pipeline(pipeline, args.out)}")
    if args.run_local:
        result = run_local(pipeline, args.repo, args.pipeline_root, args.bentoml_home)
        print(f"local run: {result['run_dir']}\ngate decision: {result['decision']}")


if __name__ == "__main__":
    main()
