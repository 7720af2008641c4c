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


def direct_edges(edges: list[tuple[str, str]], keep_into: frozenset[str] | set[str] = frozenset()) \
        -> list[tuple[str, str]]:
    """The edges to draw (and wire) of the task graph `edges` [(upstream, downstream) task ids]: its transitive
    reduction (Aho, Garey & Ullman 1972; networkx.transitive_reduction), in the given order, de-duplicated.

    An edge A -> C is dropped when a longer path A -> B -> C exists, so every task still runs after exactly
    the tasks it ran after (same reachability) and the graph is a chain where DVC's data flow is one, instead
    of every transitive dependency drawn. Edges into a task in `keep_into` are all kept: a task whose trigger
    rule is not all_success (run_summary: all_done) waits only until its direct upstream are *done*, and a task
    on the longer path may be done early (a branch skips `package` at once), so there the path does not
    enforce the order and the direct edge must stay. Raises ConfigError when the edges hold a cycle."""
    import networkx as nx

    g = nx.DiGraph(edges)
    if not nx.is_directed_acyclic_graph(g):
        cycle = " -> ".join(u for u, _ in nx.find_cycle(g))
        raise ConfigError("dvc.yaml", f"the task graph has a cycle ({cycle})",
                          "make no stage depend, directly or not, on what it writes")
    keep = set(nx.transitive_reduction(g).edges) | {(u, v) for u, v in g.edges if v in keep_into}
    return [e for e in dict.fromkeys(edges) if e in keep]


def stage_doc(stage: Stage, repo: Path) -> str:
    """The Markdown an Airflow task shows as its doc: the DVC command, what the stage does (the docstring of the
    module its `python -m` command runs, read from the file, not imported: the scheduler parses the DAG often),
    and what it reads and writes. A command that runs no module of the repository gets the command alone."""
    import ast
    import shlex

    words = shlex.split(stage.cmd) if stage.cmd else []
    module = words[words.index("-m") + 1] if "-m" in words[:-1] else None
    rel = module.replace(".", "/") + ".py" if module else None
    source = Path(repo) / rel if rel else None
    about = ast.get_docstring(ast.parse(source.read_text(encoding="utf-8"))) \
        if source is not None and source.is_file() else None
    code = [d for d in stage.deps if d.endswith(".py")]
    data = [d for d in stage.deps if not d.endswith(".py")]
    lines = [f"`dvc repro -s {stage.address}`: `{stage.cmd}`", ""]
    if about:
        lines += [f"From `{rel}`:", "", about, ""]
    lines += [f"**Reads** {', '.join(f'`{d}`' for d in data) or 'no data'}"
              + (f" and {len(code)} code file(s)" if code else ""), "",
              f"**Writes** {', '.join(f'`{o}`' for o in stage.outs) or 'nothing DVC tracks'}"]
    return "\n".join(lines)
