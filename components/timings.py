"""A stage's run record: what differs between two runs on the same inputs, kept out of DVC's outputs.

DVC outputs must be a function of the stage's inputs alone. A wall-clock `seconds` inside one (as
`ingest.json`, `meta.json` and the training summaries once held) gives every re-run a new hash, so
`dvc repro -f -s ingest` on unchanged data, or the retry after a kill, makes every stage downstream
stale and retrains the models for nothing. So each stage writes durations, the host, the device it
picked, how a run resumed, and the like to `--timings PATH` (`reports/timings/<stage>.json`: named on
the stage's command line in dvc.yaml, declared as nothing, ignored by git), and its DVC outputs,
metrics and plots keep only what its inputs decide.

The benchmarks (benchmarks/quality.py) read these records for their timing columns.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from components.io import write_json

#: per-round keys of a training curve that are wall-clock, moved from the curve (a DVC plot) to the record
CURVE_TIME_KEYS = ("seconds", "minutes")


def host() -> dict[str, Any]:
    """Where this process runs: the machine's name, its CPU count and Python."""
    return {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()}


def code_version(cwd: Path | None = None) -> dict[str, Any]:
    """The git commit the code runs at (`commit`, None outside a git work tree or without git) and whether
    the tracked files under components/ differ from it (`code_dirty`): the run report shows it, as
    "trained at commit". A run record's fact, not an output: a forced re-run at a later commit that changes
    no input writes the same outputs."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "code_dirty": None}
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "components")
    return {"commit": commit, "code_dirty": None if changed is None else bool(changed)}


def write_timings(path: Path | None, stage: str, seconds: float, **facts: Any) -> None:
    """Write the run record of `stage` to `path` (nothing when `path` is None, e.g. a stage run by hand).

    `seconds`: the stage's wall-clock duration; `facts`: anything else that two runs on the same inputs
    may disagree on (durations of parts, throughput, threads, device, resume points). The record also
    holds the host, the UTC time the run finished and the git commit of the code (`code_version`).
    """
    if path is None:
        return
    write_json(Path(path), {"stage": stage, "seconds": round(seconds, 2),
                            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                            **host(), **code_version(), **facts})


def split(summary: dict[str, Any], keys: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`summary` without `keys`, the entries of `keys` it has): the output's part and the record's part."""
    return ({k: v for k, v in summary.items() if k not in keys}, {k: summary[k] for k in keys if k in summary})


def split_curve(curve: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the curve without its wall-clock keys, those keys per round with the round's `epoch` and `step`).

    The first is what the stage writes as its DVC plot; the second goes to its run record."""
    plain = [{k: v for k, v in row.items() if k not in CURVE_TIME_KEYS} for row in curve]
    timed = [{k: row[k] for k in ("epoch", "step", *CURVE_TIME_KEYS) if k in row} for row in curve]
    return plain, timed
