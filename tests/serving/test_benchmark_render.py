"""The serving benchmark's README table comes from its result file."""

from __future__ import annotations

from benchmarks.serving import render


def test_render_table_from_result():
    run = {"bare_forward": {"p50_ms": 400.0}, "c1": {"p50_ms": 410.0, "p95_ms": 450.0, "p99_ms": 470.0, "errors": 0},
           "c8": {"p50_ms": 2400.0, "p95_ms": 3600.0, "p99_ms": 3700.0, "throughput_rps": 3.1, "errors": 0}}
    report = {"batching": run, "no_batching": {**run, "c8": {**run["c8"], "throughput_rps": 2.4}}, "threads": 1,
              "dtype": "torch.bfloat16", "machine": {"cpus": 2, "loadavg_before": [4.0], "loadavg_after": [5.0]},
              "targets": {"errors": {"value": 0, "target": "== 0", "met": True}}}
    table = render(report)
    assert "| batching | 400.0 ms | 410.0 / 450.0 / 470.0 ms | 2400.0 / 3600.0 / 3700.0 ms | 3.1 req/s | 0 |" in table
    assert "| no batching |" in table and "2.4 req/s" in table and "errors 0 (== 0: met)" in table
