"""benchmarks/reliability.py: the request plan and the summary without a server, then one small run against a
real `bentoml serve` of the fixture model."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from benchmarks.reliability import (
    KINDS,
    Catalogue,
    plan,
    reliability_lines,
    render,
    summarise,
)
from components.serving.settings import ServingSettings
from tests.conftest import REPO
from tests.serving.conftest import stage_env


@pytest.fixture
def catalogue() -> Catalogue:
    rng = np.random.default_rng(0)
    seqs = pd.DataFrame({"user_idx": range(1, 21),
                         "items": [rng.integers(1, 41, 12) for _ in range(20)],
                         "timestamps": [np.arange(1_600_000_000, 1_600_000_012) for _ in range(20)]})
    return Catalogue([f"I{i:05d}" for i in range(1, 41)], [f"U{i}" for i in range(1, 21)], seqs)


def test_plan_mixes_every_kind_in_at_the_asked_share(catalogue):
    reqs = plan(catalogue, 1000, 0.1, seed=0)
    kinds = Counter(r.kind for r in reqs)
    assert len(reqs) == 1000 and kinds["good"] == 900
    assert set(kinds) - {"good"} == set(KINDS) and max(kinds[k] for k in KINDS) - min(kinds[k] for k in KINDS) <= 1
    assert len(KINDS) - sum(1 for e, _ in KINDS.values() if e == "fallback") >= 8  # at least 8 ways to get a request wrong
    first_bad = next(i for i, r in enumerate(reqs) if r.kind != "good")
    assert first_bad < 50  # spread through the run, not appended at its end
    assert plan(catalogue, 1000, 0.1, seed=0) == reqs  # seeded


def test_each_kind_is_malformed_the_way_it_says(catalogue):
    reqs = [r for r in plan(catalogue, 600, 0.5, seed=1) if r.kind != "good"]
    by_kind = {k: [r for r in reqs if r.kind == k] for k in KINDS}

    def parses(r) -> bool:
        try:
            json.loads(r.body)
        except ValueError:
            return False
        return True

    assert not any(parses(r) for r in by_kind["bad_json"] + by_kind["not_utf8"])
    assert all(not isinstance(json.loads(r.body), dict) for r in by_kind["not_an_object"])
    assert all(len(r.body) > ServingSettings.from_env().max_body_bytes for r in by_kind["huge_history"])
    assert all(r.headers["content-type"] != "application/json" for r in by_kind["wrong_content_type"])
    stamps = {json.dumps(json.loads(r.body)["history"][1]["timestamp"]) for r in by_kind["bad_timestamp"]}
    assert {"-5", "1650000000000", '"2024-01-01"', "1.5", "true"} <= stamps  # the variants all come round
    body = json.loads(by_kind["history_and_user_id"][0].body)
    assert "history" in body and "user_id" in body
    assert all(json.loads(r.body)["history"] == [] for r in by_kind["empty_history"])
    good = [json.loads(r.body) for r in plan(catalogue, 50, 0.0, seed=1)]
    assert all("user_id" in g or len(g["history"]) == 10 for g in good)
    assert all(h["item_id"] in catalogue.item_ids for g in good if "history" in g for h in g["history"])


def records(kind: str, status, message: str = "bad", n: int = 1, **extra) -> list[dict]:
    return [{"kind": kind, "status": status, "seconds": 0.1 * (i + 1), "message": message, **extra} for i in range(n)]


def test_summary_counts_5xx_and_flags_every_kind_answered_otherwise_than_promised():
    recs = (records("good", 200, "", 99, items=10) + records("good", 500, "boom", 1)
            + records("bad_timestamp", 422, "history.1.timestamp: -5 is not Unix seconds", 3)
            + records("bad_json", 400, "", 1)  # a 4xx without a message is not good enough
            + records("wrong_content_type", 200, "", 1, items=10)  # a bad request answered 200 is a failure
            + records("huge_history", None, "ConnectError()", 1)  # a dropped connection is a failure
            + records("empty_history", 200, "", 2, fallback="popularity", items=10)
            + records("unknown_items", 200, "", 1, fallback="popularity", items=10)  # refused by contract: a 422
            + records("unknown_user", 400, "user_id 'x' is not in the data", 1))
    s = summarise(recs, seconds=10.0)
    assert s["status_5xx"] == 1 and s["samples_5xx"] == ["good 500: boom"] and s["transport_errors"] == 1
    assert s["good"]["n"] == 100 and s["good"]["ok"] == 99 and s["good"]["p50_ms"] == pytest.approx(5000, rel=0.02)
    kinds = s["bad"]["kinds"]
    assert kinds["bad_timestamp"] == {"n": 3, "expect": 422, "statuses": {"422": 3}, "ok": True, "documented": True,
                                      "example": "history.1.timestamp: -5 is not Unix seconds"}
    assert not kinds["bad_json"]["ok"] and not kinds["wrong_content_type"]["ok"] and not kinds["huge_history"]["ok"]
    assert kinds["empty_history"]["ok"] and kinds["empty_history"]["documented"]
    assert not kinds["unknown_items"]["ok"]
    assert kinds["unknown_user"]["ok"] and not kinds["unknown_user"]["documented"]  # a 4xx, but not the 404 promised
    assert {k: t["met"] for k, t in s["targets"].items()} == {
        "no_5xx": False, "no_transport_errors": False, "bad_answered_as_promised": False, "good_all_200": False}


def test_reliability_lines_render_a_result_file(tmp_path):
    recs = records("good", 200, "", 9, items=10) + records("bad_timestamp", 422, "history.1.timestamp: a|b", 1)
    report = {"model": "llmsrec:x", "llm": "smollm2-135m", "concurrency": 4, "threads": 1,
              "server_alive_after": True, "server_log_tracebacks": 0, "command": "python -m benchmarks.reliability",
              "machine": {"cpus": 2, "loadavg_before": [1.0], "loadavg_after": [1.5]}, **summarise(recs, 2.0)}
    path = tmp_path / "reliability_cpu.json"
    path.write_text(json.dumps(report))
    lines = reliability_lines([path, tmp_path / "absent.json"])
    assert lines[0].startswith("## Reliability") and "### reliability_cpu.json" in lines
    text = "\n".join(lines)
    assert "**0 5xx**" in text and "| bad_timestamp | 1 | 422 | 422 x1 | yes | history.1.timestamp: a\\|b |" in text
    assert render(report) in text and reliability_lines([]) == []


@pytest.mark.slow
@pytest.mark.real_llm
def test_benchmark_against_a_real_server(promoted_home, tmp_path):
    """30 requests, half of them malformed (one of each kind), against `bentoml serve` of the fixture model."""
    out = tmp_path / "rel.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.reliability", "--home", str(promoted_home), "--requests",
                          "30", "--concurrency", "4", "--bad-fraction", "0.5", "--out", str(out)], cwd=REPO,
                         env=stage_env(promoted_home), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["status_5xx"] == 0 and report["transport_errors"] == 0 and report["server_alive_after"]
    assert report["server_log_tracebacks"] == 0
    assert set(report["bad"]["kinds"]) == set(KINDS)
    assert all(k["ok"] and k["documented"] for k in report["bad"]["kinds"].values()), report["bad"]["kinds"]
    assert report["good"]["ok"] == report["good"]["n"] == 15 and report["good"]["p99_ms"] >= report["good"]["p50_ms"]
    assert "| bad_timestamp |" in run.stdout
