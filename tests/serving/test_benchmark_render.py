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
    assert "| batching | 400.0 ms | 410.0 / 450.0 / 470.0 ms | n/a | 2400.0 / 3600.0 / 3700.0 ms | 3.1 req/s | 0 |" in table
    assert "| no batching |" in table and "2.4 req/s" in table and "errors 0 (== 0: met)" in table
    assert "Tiny random LLM" not in table
    # no server recorded its environment: an old result, whose "batching" was BentoML's batcher
    assert "its batching servers used BentoML's" in table
    for name in ("batching", "no_batching"):
        report[name] = {**report[name], "env": {}}
    assert "used BentoML's" not in render(report)


def test_render_shows_the_serving_overhead_and_labels_a_tiny_llm_run():
    run = {"bare_forward": {"p50_ms": 4.0}, "c1": {"p50_ms": 7.9, "p95_ms": 10.3, "p99_ms": 11.7, "errors": 0,
                                                  "overhead_ms": 3.6},
           "c8": {"p50_ms": 31.4, "p95_ms": 41.0, "p99_ms": 43.1, "throughput_rps": 244.7, "errors": 0}}
    after = [{"from_s": 0.0, "p50_ms": 11.1}, {"from_s": 5.0, "p50_ms": 9.3}]
    report = {"batching": {**run, "c1_after_c8": after}, "no_batching": run, "tiny_llm": True, "threads": 1, "dtype": "torch.bfloat16",
              "machine": {"cpus": 2, "loadavg_before": [1.0], "loadavg_after": [1.0]}, "targets": {}}
    table = render(report)
    assert "| batching | 4.0 ms | 7.9 / 10.3 / 11.7 ms | 3.6 ms | 31.4 / 41.0 / 43.1 ms | 244.7 req/s | 0 |" in table
    assert "Tiny random LLM (`--tiny-llm`)" in table
    assert "right after the c8 load (`--after-burst`): batching: 11.1, 9.3." in table  # no_batching has none


def test_home_and_tiny_llm_together_are_refused(capsys):
    import pytest

    from benchmarks.serving import main

    with pytest.raises(SystemExit) as exit_:
        main(["--tiny-llm", "--home", "/tmp/x"])
    assert exit_.value.code == 2 and "--home and --tiny-llm both pick the model" in capsys.readouterr().err


def test_gpu_result_shows_the_batch_sweep_and_the_card_and_lands_in_docs(tmp_path):
    import json

    from benchmarks.report import render as render_docs

    run = {"bare_forward": {"p50_ms": 21.3}, "c1": {"p50_ms": 38.1, "p95_ms": 78.7, "p99_ms": 237.3, "errors": 0},
           "c8": {"p50_ms": 123.1, "p95_ms": 243.9, "p99_ms": 862.3, "throughput_rps": 49.9, "errors": 0,
                  "scorer": {"calls": 20, "mean_batch": 8.0, "model_ms_per_call": 45.0}}}
    report = {"batching": run, "no_batching": {**run, "c8": {**run["c8"], "throughput_rps": 24.7, "scorer": {}}},
              "threads": 4,
              "dtype": "torch.bfloat16", "forward_by_batch": {"1": {"ms": 33.8}, "16": {"ms": 33.2}},
              "machine": {"cpus": 16, "gpu": "NVIDIA H200", "loadavg_before": [1.0], "loadavg_after": [0.4]},
              "targets": {"batching_throughput_gain_c8": {"value": 2.02, "target": ">= 2.0", "met": True}},
              "command": "python -m benchmarks.serving --threads 4"}
    assert "B=1 33.8 ms, B=16 33.2 ms" in render(report) and "NVIDIA H200, 16 CPUs" in render(report)
    assert "scorer (from its /metrics): batching c8: mean batch 8.0, 45.0 ms model time per call." in render(report)
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "serving_gpu.json").write_text(json.dumps(report))
    doc = render_docs(tmp_path)
    assert "### gpu/serving_gpu.json" in doc and "`python -m benchmarks.serving --threads 4`" in doc
    assert "batching_throughput_gain_c8 2.02 (>= 2.0: met)" in doc


def test_targets_of_a_partial_run_say_only_what_was_measured():
    from benchmarks.serving import targets_of

    run = {"bare_forward": {"p50_ms": 40.0}, "c1": {"p50_ms": 50.0, "errors": 0},
           "c8": {"throughput_rps": 40.0, "errors": 1}}
    partial = targets_of({"batching": run})
    assert set(partial) == {"p50_c1_over_bare", "errors"}
    assert partial["p50_c1_over_bare"] == {"value": 1.25, "target": "<= 1.3", "met": True}
    assert partial["errors"]["value"] == 1 and not partial["errors"]["met"]
    whole = targets_of({"batching": run, "no_batching": {**run, "c8": {"throughput_rps": 25.0, "errors": 0}}})
    assert whole["batching_throughput_gain_c8"] == {"value": 1.6, "target": ">= 2.0", "met": False}
    report = {"batching": {**run, "c1": {**run["c1"], "p95_ms": 60, "p99_ms": 70},
                           "c8": {**run["c8"], "p50_ms": 1, "p95_ms": 2, "p99_ms": 3}},
              "complete": False, "threads": 4, "dtype": "torch.bfloat16", "targets": partial,
              "machine": {"cpus": 16, "loadavg_before": [1.0], "loadavg_after": [1.0]}}
    table = render(report)
    assert "| batching |" in table and "| no batching |" not in table and "Partial run: not every server" in table


def test_servers_of_removed_modes_in_old_results_are_shown_as_a_record():
    """Old result files hold servers the benchmark no longer starts (BentoML's batcher, the model forced
    onto the event loop): their rows stay, after today's servers, with a note saying what they were."""
    run = {"env": {}, "bare_forward": {"p50_ms": 4.0}, "c1": {"p50_ms": 7.0, "p95_ms": 9.0, "p99_ms": 9.5, "errors": 0},
           "c8": {"p50_ms": 30.0, "p95_ms": 40.0, "p99_ms": 41.0, "throughput_rps": 200.0, "errors": 0}}
    report = {"batching_loop": run, "batching": run, "batching_bentoml": run, "no_batching": run, "threads": 1,
              "dtype": "torch.bfloat16", "targets": {}, "machine": {"cpus": 2, "loadavg_before": [1.0],
                                                                   "loadavg_after": [1.0]}}
    rows = [line.split("|")[1].strip() for line in render(report).splitlines() if line.startswith("| ")][1:]
    assert rows == ["batching", "no batching", "batching bentoml", "batching loop"]
    assert ("Kept as a record, from modes since removed from the service: batching bentoml: BentoML's own batcher "
            "(`batchable=True`, then LLMSREC_BATCHING=bentoml); batching loop: ") in render(report)
    del report["batching_bentoml"], report["batching_loop"]
    assert "Kept as a record" not in render(report)


def test_docs_plot_the_serving_targets_of_every_result(tmp_path):
    """`benchmarks.report` draws one serving figure next to the tables (c1 ratio, batching gain, batch
    sweep); results without a sweep or without the unbatched server are drawn with what they have."""
    import json

    from benchmarks.report import render as render_docs
    from benchmarks.report import serving_label

    run = {"bare_forward": {"p50_ms": 150.0}, "c1": {"p50_ms": 157.0, "p95_ms": 170.0, "p99_ms": 175.0, "errors": 0},
           "c8": {"p50_ms": 1200.0, "p95_ms": 1400.0, "p99_ms": 1450.0, "throughput_rps": 6.4, "errors": 0}}
    after = [{"from_s": 0.0, "p50_ms": 330.0}, {"from_s": 5.0, "p50_ms": 160.0}]
    cpu = {"batching": {**run, "env": {}}, "no_batching": {**run, "env": {}, "c8": {**run["c8"], "throughput_rps": 5.4}},
           "batching_bentoml": {**run, "env": {}, "c1_after_c8": after}, "threads": 2,
           "dtype": "torch.bfloat16",
           "forward_by_batch": {"1": {"ms": 150.0, "ideal_gain": 1.0}, "4": {"ms": 640.0, "ideal_gain": 0.94}},
           "machine": {"cpus": 2, "torch": "2.13.0+cpu", "loadavg_before": [1.0], "loadavg_after": [1.0]},
           "targets": {"batching_throughput_gain_c8": {"value": 1.185, "target": ">= 2.0", "met": False}}}
    partial = {"batching": run, "threads": 4, "dtype": "torch.bfloat16", "complete": False, "targets": {},
               "machine": {"cpus": 16, "torch": "2.11.0+cu130", "loadavg_before": [1.0], "loadavg_after": [1.0]}}
    (tmp_path / "gpu").mkdir()
    (tmp_path / "serving.json").write_text(json.dumps(cpu))
    (tmp_path / "gpu" / "serving_gpu.json").write_text(json.dumps(partial))
    doc = render_docs(tmp_path, plot=tmp_path / "docs" / "benchmarks.png")
    png = tmp_path / "docs" / "serving.png"
    assert "![serving targets per result file](serving.png)" in doc
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert serving_label("serving", cpu) == "serving\n2-core CPU\n2 torch thr"
    # an early GPU result that did not record its card is labelled with what it did record, and its
    # servers with no recorded environment ran before the scorer's own batcher
    assert serving_label("gpu/serving_gpu", partial) == ("gpu/serving_gpu\n16 cores, torch 2.11.0+cu130\n4 torch thr"
                                                         "\nbatching = BentoML's")


def test_docs_list_what_each_batcher_costs_a_lone_request(tmp_path):
    """The recorded results of the removed `benchmarks.batchers_c1` keep their table in docs/benchmarks.md,
    against the last server, marked as a record."""
    import json

    from benchmarks.report import render as render_docs

    c1 = {"p50_ms": 8.2, "p95_ms": 10.0, "p99_ms": 11.0, "n": 2000}
    result = {"on_loop": "1", "tiny_llm": True, "errors": 0, "machine": {"cpus": 2},
              "command": "python -m benchmarks.batchers_c1 --tiny-llm",
              "servers": {"batching": {"c1": c1, "p50_minus_no_batching_ms": 0.09},
                          "no_batching": {"c1": {**c1, "p50_ms": 8.1}, "p50_minus_no_batching_ms": 0.0}}}
    (tmp_path / "batchers_c1_tiny_loop.json").write_text(json.dumps(result))
    doc = render_docs(tmp_path)
    assert "## Batchers at concurrency 1 (a record: `benchmarks.batchers_c1` and its server modes are removed)" in doc
    assert "| server | c1 p50 | c1 p95 | p50 minus no_batching |" in doc
    assert "| batching | 8.2 ms | 10.0 ms | +0.09 ms |" in doc
    assert "2000 requests per server, round-robin; LLMSREC_SCORE_ON_LOOP=1; 2 CPUs, tiny random LLM; errors 0." in doc
