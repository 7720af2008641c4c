"""Progress (components/progress.py): sized to the budget that ends first, 100% when the loop stops, and plain
lines, no carriage returns, when the output is not a terminal."""

from __future__ import annotations

import io
import re

import pytest

from components.progress import BudgetProgress, track


class Terminal(io.StringIO):
    """What tqdm draws on a terminal, kept: a stream that says it is a TTY."""

    def isatty(self) -> bool:
        return True


def last_frame(drawn: str) -> str:
    """The bar as it reads at the end: the last redraw after a carriage return."""
    return [frame for frame in re.split(r"[\r\n]", drawn) if frame.strip()][-1]


def test_the_budget_that_ends_first_sizes_the_bar():
    # issue 27's distill: 10 epochs of 504 steps under a 6-minute budget; the minutes end first
    meter = BudgetProgress("distill", steps=5040, seconds=360, enabled=False)
    assert meter.fraction(499, 360) == 1.0  # the budget spent at 10% of the steps
    assert meter.fraction(499, 36) == pytest.approx(0.1)  # elapsed 10%, steps 9.9%: the larger share
    assert meter.fraction(2520, 36) == pytest.approx(0.5)  # steps ahead of the clock
    assert BudgetProgress("sasrec", steps=400, enabled=False).fraction(100, 1e9) == 0.25  # no clock budget
    with pytest.raises(ValueError, match="steps or seconds"):
        BudgetProgress("x", steps=None, seconds=None)


def test_not_a_terminal_plain_lines_then_100_percent_with_the_reason():
    out = io.StringIO()
    meter = BudgetProgress("distill", steps=5040, seconds=360, file=out, every_seconds=0)
    for step in (100, 200, 300):
        meter.update(step, elapsed=step * 0.6, loss="0.5")
    meter.close("reached distill.max_minutes=6")
    text = out.getvalue()
    assert "\r" not in text and not meter.terminal
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].startswith("distill:  17% (step 100/5040, 1.0/6 min, loss 0.5), ETA ")
    assert lines[-1].startswith("distill: 100% (step 300/5040, 3.0/6 min, loss 0.5) in ")
    assert lines[-1].endswith(": reached distill.max_minutes=6")


def test_lines_come_every_so_often_not_every_step():
    out = io.StringIO()
    meter = BudgetProgress("sasrec", steps=1000, file=out, every_seconds=3600)
    for step in range(1, 1001):
        meter.update(step)
    meter.close("early stop")
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]  # only the closing line
    assert out.getvalue().startswith("sasrec: 100% (step 1000/1000) in ")


def test_on_a_terminal_a_bar_that_closes_at_100_percent_when_stopped_early():
    term = Terminal()
    meter = BudgetProgress("sasrec", steps=4000, file=term)
    for step in range(1, 1121):  # early stopping at 28% of the epochs
        meter.update(step, loss="0.25")
    meter.close("early stop: no better valid NDCG@10 in 5 validations")
    end = last_frame(term.getvalue())
    assert meter.terminal and end.startswith("sasrec: 100%|"), end
    assert "step 1120/4000" in end and "early stop: no better valid NDCG@10" in end


def test_a_line_printed_under_a_live_bar_is_not_drawn_into_it():
    term = Terminal()
    meter = BudgetProgress("sasrec", steps=10, file=term)
    meter.update(5)
    meter.logger(lambda m: term.write(m + "\n"))("epoch 1: loss 0.5")
    meter.close()
    assert "\repoch 1: loss 0.5\n" in term.getvalue() or "\nepoch 1: loss 0.5\n" in term.getvalue()


def test_track_is_silent_for_a_short_loop_off_a_terminal():
    out = io.StringIO()
    assert list(track(range(7), "item table", file=out)) == list(range(7))
    assert out.getvalue() == ""  # e.g. one serving request: no line per call
    out = io.StringIO()
    assert list(track(range(3), "item table", file=out, every_seconds=0)) == [0, 1, 2]
    assert out.getvalue().splitlines()[-1].startswith("item table: 100% (batch 3/3) in ")


def test_lines_through_a_callers_log_carry_its_label():
    lines: list[str] = []
    meter = BudgetProgress("distill", steps=10, log=lines.append, label="training", file=io.StringIO())
    meter.close("reached distill.max_steps=10")
    assert lines == [lines[0]] and lines[0].startswith("training: 100% (step 0/10) in ")
