"""Errors that reach users. Each names the bad input, the problem and the fix."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path

# The longest subject, problem and fix an error carries. Values reach messages (a bad params value, a
# rejected row, a file name): cut, one error stays one readable line, and the fix is never cut off by a
# long problem. A longer part keeps its start and says how long it was.
MAX_SUBJECT, MAX_PROBLEM, MAX_FIX = 1000, 2000, 1000
#: a message that did not come from a PipelineError (a stage's output line, another exception's text)
MAX_MESSAGE = MAX_SUBJECT + MAX_PROBLEM + MAX_FIX


def clip(text: str, limit: int) -> str:
    """`text` when it has at most `limit` characters, else its start and its length, in at most `limit`."""
    if len(text) <= limit:
        return text
    tail = f" ... [cut: {len(text):,} characters in all]"
    return text[: max(limit - len(tail), 0)] + tail


class PipelineError(Exception):
    """A problem the user can fix: bad input data, bad params, a missing file.

    `subject`, `problem` and `fix` are kept cut to MAX_SUBJECT, MAX_PROBLEM and MAX_FIX characters, so
    `str(error)` is at most about 4,000 whatever values reach it.
    """

    def __init__(self, subject: str | Path, problem: str, fix: str):
        self.subject = clip(str(subject), MAX_SUBJECT)
        self.problem = clip(str(problem), MAX_PROBLEM)
        self.fix = clip(str(fix), MAX_FIX)
        super().__init__(f"{self.subject}: {self.problem}. Fix: {self.fix}")


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
