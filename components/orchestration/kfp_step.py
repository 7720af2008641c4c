"""What one Kubeflow Pipelines component does at run time: one DVC stage in a workspace of its own.

The pipeline (components/orchestration/kfp.py) gives every stage of dvc.yaml a component whose code is a call
to `run_step`. Components share no filesystem: each one

1. makes a fresh workspace and copies into it the code the image holds (`code`: the repository's tracked
   files; no data, no DVC cache, no dvc.lock);
2. puts its input artifacts in place: the outputs of upstream stages that this stage depends on, at the
   paths dvc.yaml names (`data/prepared`, `models/sasrec`, ...), and writes the dvc.lock entries of the
   stages that produced them (each output artifact carries its stage's entry in its metadata, `dvc_lock`);
3. runs `dvc repro -s <stage>` there, as the Airflow task does (components/orchestration/runner.py): DVC runs
   the stage's own command and records the stage in the workspace's dvc.lock, so the versions DVC reports
   are those of what the stage received (`package` stamps the model with the hash of `data/prepared` that
   the lock holds, as under `dvc repro`);
4. copies each of the stage's outputs (outs, metrics and plots) into its output artifact, with the stage's
   new dvc.lock entry in the artifact's metadata;
5. for the stage that writes the gate report, returns the gate's decision (components/serving/decision.py
   is its one reader), which the pipeline's condition on the release stages reads.

Every dependency that no upstream stage writes must come with the code: params.yaml, the stage's modules,
and `models/warm_start/sasrec` and `models/warm_start/llmsrec` (their READMEs are tracked; nothing is staged
there under KFP, so SASRec and LLM-SRec's adapters train from scratch). A dependency found in neither place fails the step, naming it.

This module imports no kfp: the artifacts arrive as objects with `.path` and `.metadata`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from components.errors import ConfigError, DataError
from components.orchestration import graph
from components.orchestration.runner import run_stage
from components.serving.decision import read_decision

#: the artifact metadata that carries the producing stage's dvc.lock entry downstream
LOCK_KEY = "dvc_lock"
#: never copied from the code into a workspace: version control, environments, caches, DVC's own state
SKIPPED = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".dvc/cache", ".dvc/tmp"}


def code_files(code: Path) -> list[str]:
    """The repository-relative files of the code at `code`: `git ls-files` (tracked files only) in a git
    checkout; in an image without `.git` (built from the tracked files, e.g. a `git archive`), every file
    except SKIPPED. Raises ConfigError when `code` holds no dvc.yaml."""
    code = Path(code)
    if not (code / "dvc.yaml").is_file():
        raise ConfigError(code, "holds no dvc.yaml, so it is not this repository's code",
                          "pass the folder where the image (or this checkout) holds the repository, "
                          "as the pipeline's `code` parameter")
    if (code / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z"], cwd=code, check=True, capture_output=True, text=True).stdout
        return [f for f in out.split("\0") if f and (code / f).is_file()]
    files = []
    for root, dirs, names in os.walk(code):
        rel = Path(root).relative_to(code)
        dirs[:] = [d for d in dirs if d not in SKIPPED and (rel / d).as_posix() not in SKIPPED]
        files.extend((rel / n).as_posix() for n in names)
    return files


def copy_path(src: Path, dest: Path) -> None:
    """A file or a folder, to `dest` (its parents made; a folder merged into one already there)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dest)


def lock_location(address: str) -> tuple[str, str]:
    """(the dvc.lock that records stage `address`, the stage's key in it): `name` -> (dvc.lock, name),
    `sub/dvc.yaml:name` -> (sub/dvc.lock, name)."""
    dvcfile, _, name = address.rpartition(":")
    return (Path(dvcfile).with_name("dvc.lock").as_posix() if dvcfile else "dvc.lock"), name


def write_locks(ws: Path, entries: Mapping[str, dict]) -> None:
    """Write the upstream stages' dvc.lock entries (address -> entry) into the workspace's lock files."""
    files: dict[str, dict] = {}
    for address, entry in entries.items():
        lock, name = lock_location(address)
        files.setdefault(lock, {})[name] = entry
    for lock, stages in files.items():
        (ws / lock).parent.mkdir(parents=True, exist_ok=True)
        (ws / lock).write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}, sort_keys=False))


def run_step(code: str, bentoml_home: str, address: str, cmd: str, deps: list[str], inputs: Mapping[str, Any],
             outputs: Mapping[str, Any], gate_report: str | None = None, log=print) -> str | None:
    """Run the DVC stage `address` as one KFP component (see the module's docstring).

    `inputs` / `outputs`: repo-relative path -> artifact (an object with `.path` and `.metadata`). `deps`: every
    path the stage depends on (dvc.yaml). `cmd`: the command the pipeline was compiled with; the code's
    dvc.yaml must still say the same, or the wiring is stale. `bentoml_home`: the BentoML store the gate reads
    and `package` writes ('' = the environment's BENTOML_HOME). Returns the gate's decision (promoted,
    provisional or rejected) when the stage writes `gate_report`, else None. Raises ConfigError (stale
    pipeline, bad `code`), DataError (a dependency or output missing), StageInputError (the stage rejected its
    input) or StageFailed (a crash)."""
    code_dir = Path(code).resolve()
    files = code_files(code_dir)
    if bentoml_home:
        os.environ["BENTOML_HOME"] = bentoml_home  # this process runs this one step: its environment is the step's
    with tempfile.TemporaryDirectory(prefix=f"kfp-{graph.task_id_for(address)}-") as tmp:
        ws = Path(tmp)
        for rel in files:
            copy_path(code_dir / rel, ws / rel)
        # A workspace is no git work tree: DVC works without one when told so (config.local is DVC's
        # per-workspace file, ignored by git).
        (ws / ".dvc" / "config.local").write_text("[core]\n    no_scm = true\n")
        current = {s.address: s for s in graph.pipeline_stages(ws, scm=False)}.get(address)
        if current is None or current.cmd != cmd:
            raise ConfigError(code_dir / "dvc.yaml", f"stage {address!r} is not the one this pipeline was compiled "
                              f"from (compiled command: {cmd!r}; the code's: {current.cmd if current else 'no such stage'!r})",
                              "compile the pipeline again from the same commit as the image: "
                              "`python -m components.orchestration.kfp`")
        upstream = {}
        for path, artifact in inputs.items():
            copy_path(Path(artifact.path), ws / path)
            if LOCK_KEY in artifact.metadata:
                record = json.loads(artifact.metadata[LOCK_KEY])
                upstream[record["stage"]] = record["entry"]
        if missing := [d for d in deps if not (ws / d).exists()]:
            raise DataError(", ".join(missing), f"stage {address!r} depends on it, and it is neither in the code the "
                            "image holds nor an output of an upstream stage",
                            "add it to the repository (git) or to an upstream stage's outs in dvc.yaml")
        write_locks(ws, upstream)
        run_stage(ws, address, log=log)
        lock, name = lock_location(address)
        entry = (yaml.safe_load((ws / lock).read_text()) or {})["stages"][name]
        for path, artifact in outputs.items():
            if not (ws / path).exists():
                raise DataError(path, f"stage {address!r} did not write it, although dvc.yaml declares it",
                                "make the stage write every output dvc.yaml lists (DVC would fail the same way)")
            copy_path(ws / path, Path(artifact.path))
            artifact.metadata["path"] = path
            artifact.metadata[LOCK_KEY] = json.dumps({"stage": address, "entry": entry})
        if gate_report is not None:
            report = read_decision(ws / gate_report)
            log(f"gate: {report['decision']}: {report['reason']}")
            return report["decision"]
    return None
