"""Progress of a long loop that is honest about when it ends, on a terminal and in a log file.

A training run (components/models/training.py) ends at whichever budget runs out first: its steps (epochs x
batches per epoch, or `max_steps`) or its wall-clock minutes (`max_minutes`), or before either on early
stopping. So the bar measures the share of the budget spent, max(step / steps, elapsed / seconds): the
budget that will end first is the one furthest along, and the bar's ETA is the time to that end (an upper
bound, since early stopping may come sooner). When the run stops, at a budget or early, the bar is completed
to 100% and names the reason, so an early stop never reads as a crash. A plain count (`track`: the batches
of a fixed list) is the same with one budget, its length.

Where it shows: on a terminal (the stream, stderr by default, is a TTY) a tqdm bar. Anywhere else (a log
file, a pipe, Airflow's task log) tqdm's carriage-return redraws would land as fragments between the
stage's own lines, so there is no bar: one plain line every `every_seconds` instead, and a last one at
the end.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")

#: seconds between two plain lines when the output is not a terminal
EVERY_SECONDS = 30.0
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is a TTY (a closed or detached stream is not)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def duration(seconds: float) -> str:
    """`seconds` as a person reads it: '42 s', '3.5 min', '1.2 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class BudgetProgress:
    """A bar (on a terminal) or periodic lines (elsewhere) for a loop with a budget of `steps` and/or
    `seconds`, whichever ends first.

    `step` and `elapsed` (seconds, the budget's clock) are where a resumed run starts. `update` takes absolute
    positions; `close(reason)` completes to 100% with the reason. Lines go to `log` (default: a line on
    `file`, which is stderr by default and decides terminal or not), named `label` (default `desc`: a caller
    whose log already names the stage gives a shorter one). `final_line=False` keeps a loop that
    never reached its first periodic line silent at the end too (short loops, e.g. one serving request).
    Raises ValueError when neither budget is given."""

    def __init__(self, desc: str, *, steps: int | None, seconds: float | None = None, step: int = 0,
                 elapsed: float = 0.0, unit: str = "step", enabled: bool = True,
                 log: Callable[[str], None] | None = None, file: TextIO | None = None,
                 every_seconds: float = EVERY_SECONDS, final_line: bool = True, leave: bool = True,
                 label: str | None = None):
        if not steps and not seconds:
            raise ValueError(f"{desc}: a progress budget needs steps or seconds, got steps={steps}, seconds={seconds}")
        self.desc, self.steps, self.seconds, self.unit = desc, steps, seconds, unit
        self.label = label or desc
        self.file = file if file is not None else sys.stderr
        self.every_seconds, self.final_line = every_seconds, final_line
        self._log = log if log is not None else self._write_line
        self.step, self.elapsed, self.info = step, elapsed, ""
        self.enabled, self.closed = enabled, not enabled
        self.lines = 0  # plain lines written so far
        self.terminal = enabled and is_terminal(self.file)
        now = time.monotonic()
        self._start, self._start_elapsed, self._last_line = now, elapsed, now
        self._start_fraction = self.fraction(step, elapsed)
        self.bar = None
        if self.terminal:
            self.bar = tqdm(total=100, initial=100 * self._start_fraction, desc=desc, file=self.file, leave=leave,
                            mininterval=0.5, bar_format=BAR_FORMAT, dynamic_ncols=True)
            self.bar.set_postfix_str(self._detail(), refresh=False)

    def fraction(self, step: int, elapsed: float) -> float:
        """Share of the budget spent after `step` steps and `elapsed` seconds, in [0, 1]."""
        shares = [step / self.steps if self.steps else 0.0, elapsed / self.seconds if self.seconds else 0.0]
        return min(1.0, max(shares))

    def _detail(self) -> str:
        parts = [f"{self.unit} {self.step}/{self.steps}" if self.steps else f"{self.unit} {self.step}"]
        if self.seconds:
            parts.append(f"{self.elapsed / 60:.1f}/{self.seconds / 60:g} min")
        if self.info:
            parts.append(self.info)
        return ", ".join(parts)

    def _write_line(self, line: str) -> None:
        print(line, file=self.file, flush=True)

    def _line(self, pct: float, tail: str) -> None:
        self._log(f"{self.label}: {pct:3.0f}% ({self._detail()}){tail}")
        self.lines += 1

    def update(self, step: int, elapsed: float | None = None, **info: object) -> None:
        """Now at `step` steps and `elapsed` seconds of the budget's clock (default: this process's time
        since the start, added to the start's); `info` (e.g. loss='0.1234') is shown beside."""
        if self.closed:
            return
        now = time.monotonic()
        self.step = step
        self.elapsed = elapsed if elapsed is not None else self._start_elapsed + now - self._start
        self.info = ", ".join(f"{k} {v}" for k, v in info.items())
        f = self.fraction(self.step, self.elapsed)
        if self.bar is not None:
            self.bar.set_postfix_str(self._detail(), refresh=False)
            if 100 * f > self.bar.n:
                self.bar.update(100 * f - self.bar.n)
        elif now - self._last_line >= self.every_seconds:
            done, spent = f - self._start_fraction, now - self._start
            eta = f", ETA {duration((1 - f) * spent / done)}" if done > 0 and f < 1 else ""
            self._line(100 * f, eta)
            self._last_line = now

    def close(self, reason: str = "") -> None:
        """Complete to 100%: the loop is over, at a budget or before it (`reason` says which)."""
        if self.closed:
            return
        self.closed = True
        tail = f": {reason}" if reason else ""
        if self.bar is not None:
            self.bar.set_postfix_str(self._detail() + tail, refresh=False)
            self.bar.update(100 - self.bar.n)
            self.bar.close()
        elif self.final_line or self.lines:
            self._line(100, f" in {duration(time.monotonic() - self._start)}{tail}")

    def writing(self) -> contextlib.AbstractContextManager:
        """A context for printing a line while the bar is live: the bar steps aside and is drawn again
        below it (tqdm.external_write_mode), rather than the line landing inside the bar."""
        return tqdm.external_write_mode(file=self.file) if self.bar is not None else contextlib.nullcontext()

    def logger(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """`log`, printing under `writing()`."""
        def write(message: str) -> None:
            with self.writing():
                log(message)
        return write


def track(items: Iterable[T], desc: str, *, total: int | None = None, unit: str = "batch", enabled: bool = True,
          file: TextIO | None = None, every_seconds: float = EVERY_SECONDS) -> Iterator[T]:
    """`items`, one by one, with progress by count (`BudgetProgress` with `total` steps, default
    len(items)). The bar leaves nothing behind; in a log file a loop shorter than `every_seconds` prints
    nothing, a longer one a line every `every_seconds` and one at the end."""
    total = len(items) if total is None and isinstance(items, Sized) else total
    if not total:  # an empty or unsized loop: nothing to measure against
        yield from items
        return
    meter = BudgetProgress(desc, steps=total, unit=unit, enabled=enabled, file=file, every_seconds=every_seconds,
                           final_line=False, leave=False)
    for i, item in enumerate(items, 1):
        yield item
        meter.update(i)
    meter.close()
