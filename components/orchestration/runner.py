"""Run one DVC stage the way the DAG's tasks do: `dvc repro -s <stage>` in the repository.

`-s` reproduces that stage alone (Airflow already ran its upstream tasks), and DVC skips it when its
deps, params and command are unchanged, so a retried or repeated task costs nothing. The output is
streamed into the task log as it comes.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

from components.errors import MAX_MESSAGE, DataError, clip

# What the stages print when the input, not the machine, is wrong (components.errors.stage_main):
# retrying cannot help, so the task fails at once and shows this line.
USER_ERROR = re.compile(r"^ERROR \[([\w.-]+)\] (.+)$")
# Offline, quiet tools, as the Makefile sets them.
QUIET_ENV = {"DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "False", "BENTOML_DO_NOT_TRACK": "True",
             "HF_HUB_OFFLINE": "1"}


class StageFailed(Exception):
    """The stage failed for a reason that may pass (a crash, a killed process, a lock): retry."""


class StageInputError(StageFailed):
    """The stage rejected its input or params: fix them, retrying changes nothing."""


def stage_env() -> dict[str, str]:
    """The task's environment, with this interpreter's bin first on PATH: dvc.yaml calls `python`."""
    env = {**QUIET_ENV, **os.environ}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@contextmanager
def repo_lock(repo: Path):
    """One DVC process per repository. The Airflow pool serialises the DVC tasks on one queue; this
    lock also covers a stage routed to another pool (distill on `gpu`) and a `dvc repro` started by
    hand. The waiting process blocks in the kernel (flock), it does not poll."""
    path = Path(repo) / ".dvc" / "tmp" / "orchestration.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def dvc_write_lock(repo: Path, path: Path, what: str):
    """Hold DVC's own write lock on `path` (the lock a running stage holds on its outputs, in
    `.dvc/tmp/rwlock`) while changing it outside DVC. A `dvc` command that reads it meanwhile (a stage
    with it as a dependency: DVC holds that from before the command until dvc.lock is written) stops
    with "busy"; if one is reading it now, this raises DataError at once, naming it, and changes nothing.
    `what`: who holds it, as `dvc` will report it."""
    from dvc.fs import localfs
    from dvc.lock import LockError
    from dvc.rwlock import rwlock

    tmp = Path(repo).resolve() / ".dvc" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        lock = rwlock(str(tmp), localfs, what, [], [str(Path(path).resolve())], False)
        lock.__enter__()
    except LockError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        who = next((line for line in lines if line.startswith("(PID")), lines[0] if lines else "DVC's lock")
        raise DataError(path, f"is in use by a running dvc command ({who})",
                        "let it finish, then run this again: changing it now would make dvc.lock record "
                        "what the stage did not read") from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def run_stage(repo: Path, address: str, log=print) -> dict:
    """`dvc repro -s ADDRESS`; returns {stage, ran, changed, seconds}. Raises StageInputError or StageFailed.

    `ran`: DVC ran the stage's command. `changed`: and what dvc.lock records for it changed (DVC writes the
    lock only then): a stage that always runs (`always_changed`, as `ingest_batches`) and found nothing
    new has ran but not changed."""
    with repo_lock(repo):
        return repro(repo, address, log)


def repro(repo: Path, address: str, log=print) -> dict:
    """`run_stage` without taking the repository lock: for a caller that holds it around more steps
    (components/orchestration/exchange.py pulls and pushes in the same hold)."""
    out = run_module(repo, ["dvc", "repro", "-s", address], log)
    ran = any(line.startswith("Running stage") for line in out["lines"])
    locked = any(line.startswith(("Updating lock file", "Generating lock file")) for line in out["lines"])
    return {"stage": address, "ran": ran, "changed": ran and locked, "seconds": out["seconds"]}


def run_module(repo: Path, argv: list[str], log=print) -> dict:
    """`python -m ARGV...` in the repository (params' relative paths resolve there), output streamed to
    `log`. Returns {lines, seconds}; raises StageInputError or StageFailed on a non-zero exit."""
    cmd = [sys.executable, "-m", *argv]
    lines: deque[str] = deque(maxlen=400)
    errors: list[str] = []
    t0 = time.time()
    log(f"$ python -m {' '.join(argv)}   (in {repo})")
    proc = subprocess.Popen(cmd, cwd=repo, env=stage_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = clip(line.rstrip("\n"), MAX_MESSAGE)  # one 5 MB line must not fill the log, memory or the error
        log(line)
        lines.append(line)
        if USER_ERROR.match(line):
            errors.append(line)
    rc = proc.wait()
    seconds = round(time.time() - t0, 1)
    if rc != 0:
        if errors:
            raise StageInputError(errors[-1])
        last = next((t for t in reversed(lines) if t.strip()), "no output")
        raise StageFailed(f"`{' '.join(argv[:4])}` failed (exit {rc}) after {seconds}s: {last}")
    return {"lines": list(lines), "seconds": seconds}
