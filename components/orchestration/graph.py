"""The DVC stage graph, read with DVC's own API so the DAG can mirror it.

Every pipeline stage in the repository's dvc.yaml files becomes one Airflow task; an edge A -> B
exists when B depends on something A writes (an out, metric or plot), exactly as `dvc dag` draws it.
DVC resolves `foreach`/`matrix` stages and `vars`, so those expand to one task per generated stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from components.errors import ConfigError


@dataclass(frozen=True)
class Stage:
    address: str               # what `dvc repro -s` takes: `name`, or `sub/dvc.yaml:name`
    task_id: str               # the Airflow task id (letters, digits, _ . - only)
    upstream: tuple[str, ...]  # addresses of the stages it depends on directly
    deps: tuple[str, ...]      # repo-relative paths
    outs: tuple[str, ...]      # repo-relative paths: outs, metrics and plots
    cmd: str = ""
    uncached: tuple[str, ...] = ()  # outs with `cache: false` (metrics, plot data): git carries them, not DVC


def task_id_for(address: str) -> str:
    """`train@small` or `sub/dvc.yaml:train` are valid DVC addresses but not Airflow task ids."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", address.replace("dvc.yaml:", ""))


def pipeline_stages(repo: Path, scm: bool = True) -> list[Stage]:
    """The pipeline stages (not `.dvc` files) in topological order, upstream first. `scm=False` reads a
    folder that is not a git work tree (a container's copy of the code: DVC refuses one otherwise)."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    repo = Path(repo).resolve()
    with Repo(str(repo), config=None if scm else {"core": {"no_scm": True}}) as dvc:
        graph = dvc.index.graph  # edges point from a stage to the stages it depends on
        stages = [s for s in nx.topological_sort(graph.reverse(copy=False)) if isinstance(s, PipelineStage)]
        out = []
        for s in stages:
            ups = tuple(_address(u, repo) for u in graph.successors(s) if isinstance(u, PipelineStage))
            out.append(Stage(address=_address(s, repo), task_id=task_id_for(_address(s, repo)), upstream=ups,
                             deps=tuple(_rel(d, repo) for d in s.deps), outs=tuple(_rel(o, repo) for o in s.outs),
                             cmd=" ".join(s.cmd) if isinstance(s.cmd, list) else str(s.cmd or ""),
                             uncached=tuple(_rel(o, repo) for o in s.outs if not o.use_cache)))
    ids = [s.task_id for s in out]
    if dup := sorted({i for i in ids if ids.count(i) > 1}):
        raise ConfigError(repo / "dvc.yaml", f"stages {dup} map to the same Airflow task id",
                          "rename one of the stages")
    return out


def _address(stage, repo: Path) -> str:
    """`name` for the root dvc.yaml, `sub/dvc.yaml:name` elsewhere: relative to the repository, not to
    the current directory (DVC's own `addressing` is relative to the cwd, the scheduler's is anywhere)."""
    dvcfile = Path(stage.dvcfile.path).resolve().relative_to(repo).as_posix()
    return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def _rel(item, repo: Path) -> str:
    path = Path(item.fs_path) if hasattr(item, "fs_path") else Path(str(item))
    try:
        return path.resolve().relative_to(repo).as_posix()
    except ValueError:
        return str(item)


def writer_of(stages: list[Stage], path: str) -> Stage | None:
    """The stage whose outputs include `path` (or a folder holding it)."""
    for s in stages:
        for o in s.outs:
            if path == o or path.startswith(o.rstrip("/") + "/"):
                return s
    return None


def downstream(stages: list[Stage], root: Stage) -> list[Stage]:
    """Every stage that depends, directly or not, on `root`, in topological order."""
    below = {root.address}
    for s in stages:  # topological order: a stage's upstream is decided before it
        if below & set(s.upstream):
            below.add(s.address)
    return [s for s in stages if s.address in below and s.address != root.address]


def reads(stages: list[Stage], path: str) -> list[Stage]:
    """Stages that depend on `path` (or on a folder holding it, or a file inside it)."""
    p = path.rstrip("/")
    return [s for s in stages if any(d == p or d.startswith(p + "/") or p.startswith(d.rstrip("/") + "/")
                                     for d in s.deps)]


def option_of(stage: Stage, flag: str) -> str | None:
    """The value of `--flag VALUE` in a stage's command (dvc.yaml names the files; we read them there)."""
    import shlex

    words = shlex.split(stage.cmd)
    for i, w in enumerate(words):
        if w == flag and i + 1 < len(words):
            return words[i + 1]
        if w.startswith(flag + "="):
            return w.split("=", 1)[1]
    return None


def judged_stages(stages: list[Stage], gate: Stage, report: str | None) -> list[Stage]:
    """The stages after `gate` that run whatever it decides: the one writing the run report `report`
    (orchestration.run_report), when it comes after the gate; [] when there is none or it comes before.

    Raises ConfigError when that stage depends on a stage that only a release runs (package): a rejected
    run would then have no report."""
    writer = writer_of(stages, report) if report else None
    released = {s.address for s in downstream(stages, gate)}
    if writer is None or writer.address not in released:
        return []
    if after := sorted(set(writer.upstream) & released):
        raise ConfigError("dvc.yaml", f"the run report's stage {writer.address} depends on {after}, which run only "
                          "when the gate releases, so a rejected run would have no report",
                          "make it depend on the gate's report and what came before it, not on package")
    return [writer]
