"""Errors that reach users. Each names the bad input, the problem and the fix."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path


class PipelineError(Exception):
    """A problem the user can fix: bad input data, bad params, a missing file."""

    def __init__(self, subject: str | Path, problem: str, fix: str):
        self.subject = str(subject)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.subject}: {problem}. Fix: {fix}")


class DataError(PipelineError):
    """Raw or ingested data that cannot be used as it is."""


class CheckpointError(DataError):
    """A model checkpoint or packaged model that cannot be loaded: a file missing, truncated, not what its
    name says (garbage bytes, invalid JSON), or weights whose shapes do not match its config."""


class ConfigError(PipelineError):
    """A params.yaml value that cannot work."""


def stage_main(name: str) -> Callable:
    """Wrap a stage's main() so user-fixable errors print one clear line and exit 1.

    A traceback buries the one sentence the user needs; unexpected errors still get one.
    """

    def deco(fn: Callable) -> Callable:
        @wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except PipelineError as e:
                print(f"ERROR [{name}] {e}", file=sys.stderr)
                raise SystemExit(1) from None

        return wrapper

    return deco
