"""docs/benchmarks.md is rendered from the results JSON, and says whether the target is met."""

from __future__ import annotations

import json

from benchmarks.report import render


def result(ndcg: float, hr: float) -> dict:
    m = {"ndcg@10": ndcg, "hr@10": hr, "ndcg@20": ndcg + 0.02, "hr@20": hr + 0.05, "n_users": 6040}
    return {"popularity": {**m, "ndcg@10": 0.25}, "sasrec": {**m, "full_catalogue": {**m, "ndcg@10": 0.1}},
            "sasrec_shuffled": {**m, "shuffle_drop": {"ndcg@10": 0.123}},
            "seconds": {"ingest": 2.0, "pretrain_sasrec": 600.0}, "epochs": 40, "seconds_per_epoch": 15.0,
            "peak_rss_mb": 1234.5, "training": {"sasrec": {"epochs": 40, "best_epoch": 35, "best_valid_ndcg@10": 0.61,
                                                          "stopped": "early stop", "resumed_after_epoch": 30,
                                                          "train_seconds": 600}}, "params": {"sasrec": {"loss": "ce", "max_len": 200}},
            "data": {"users": 6040, "items": 3416, "interactions": 999611}, "command": "python -m benchmarks.quality"}


def test_render_tables_from_results(tmp_path):
    (tmp_path / "quality_ml1m.json").write_text(json.dumps(result(0.6012, 0.8311) | {"median_seconds_per_epoch": 12.5}))
    (tmp_path / "quality_ml1m_bce.json").write_text(json.dumps(result(0.5512, 0.8011)))
    sub = result(0.5, 0.7)
    sub["params"]["data"] = {"max_users": 2000}
    (tmp_path / "quality_ml1m_2k.json").write_text(json.dumps(sub))
    doc = render(tmp_path)
    assert doc.count("| *target: Kang & McAuley SASRec* |") == 2  # not for the 2,000-user subsample
    assert "| sasrec | 0.6012 | 0.8311 | 0.6212 | 0.8811 | 6,040 | 0.1000 | 0.8311 |  |" in doc
    assert "| sasrec_shuffled |" in doc and "| 12.3% |" in doc
    assert "ndcg@10 +0.0107, hr@10 +0.0066; meets the target" in doc
    assert "ndcg@10 -0.0393, hr@10 -0.0234; does not meet" in doc
    assert "40 epochs at 15.0 s/epoch" in doc and "peak RSS 1,234 MB" in doc
    assert "resumed after epoch 30" in doc and "all 40 epochs took 10 min" in doc
    assert "40 epochs at a median 12.5 s/epoch (mean 15.0 s/epoch)" in doc  # quality_ml1m has a median
    assert "best validation NDCG@10 0.6100 at epoch 35 of 40" in doc
    assert doc.index("## quality_ml1m\n") < doc.index("## quality_ml1m_bce\n")


def llmsrec_result(llm: float, shuffled_drop: float, distill_loss: bool) -> dict:
    r = result(0.60, 0.82)
    m = {"ndcg@10": llm, "hr@10": 0.9, "ndcg@20": llm, "hr@20": 0.95, "n_users": 2000}
    r |= {"llmsrec": m, "llmsrec_shuffled": {**m, "shuffle_drop": {"ndcg@10": shuffled_drop}},
          "machine_per_stage": {"ingest": "cpu-box (2 CPUs)", "distill": "gpu-box (16 CPUs, NVIDIA H200)"}}
    r["training"]["llmsrec"] = {"backbone": "smollm2-135m", "dtype": "bfloat16", "device": "cuda:0", "steps": 800,
                                "epochs": 8.0, "stopped_by": "max_minutes", "best_step": 700}
    r["params"]["distill"] = {"batch_size": 20, "use_distill_loss": distill_loss, "use_uniform_loss": distill_loss}
    return r


def test_llmsrec_targets_ablation_and_plot(tmp_path):
    (tmp_path / "q_llm.json").write_text(json.dumps(llmsrec_result(0.63, 0.05, True)))
    (tmp_path / "q_llm_ablation.json").write_text(json.dumps(llmsrec_result(0.61, 0.02, False)))
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "gpu_check.json").write_text(json.dumps({
        "gpu": "NVIDIA H200", "torch": "2.11", "backbone": "smollm2-135m", "steps": 20, "seconds_per_step": 0.4,
        "batch_size": 20, "users_per_s": 50.0, "user_prompt_tokens_per_s": 12000.0, "item_table_items_per_s": 480.0,
        "rel_diff_fp32": 1e-6, "rel_diff_bf16": 4e-4, "tolerance": {"fp32": 1e-3, "bf16": 5e-2}, "agrees": True,
        "llm_weights_on": {"cuda/fp32": "cuda:0"}}))
    doc = render(tmp_path, plot=tmp_path / "out" / "bench.png")
    assert "20 bf16 training steps, 0.400 s/step" in doc and "LLM weights were on {'cuda/fp32': 'cuda:0'}" in doc
    assert "LLM-SRec NDCG@10 0.6300 vs SASRec x 1.03 = 0.6180 (met; +5.0% vs SASRec)" in doc
    assert "shuffled-inference drop 5.0% (met" in doc and "shuffled-inference drop 2.0% (missed" in doc
    assert "LLM-SRec NDCG@10 0.6100 vs SASRec x 1.03 = 0.6180 (missed by 0.0080" in doc
    assert "NDCG@10 0.6100 vs the full model 0.6300 (-3.2%; target: below the full model, met)" in doc
    assert "L_distill off" in doc and "gpu-box (16 CPUs, NVIDIA H200): distill" in doc
    assert (tmp_path / "out" / "bench.png").stat().st_size > 1000 and "](bench.png)" in doc


def suite_file(model: str, ndcg: float, drop: float | None = None, **training) -> dict:
    m = {"ndcg@10": ndcg, "hr@10": ndcg + 0.1, "ndcg@20": ndcg, "hr@20": ndcg, "n_users": 3000,
         "full_catalogue": {"ndcg@10": ndcg / 4, "hr@10": ndcg / 2}}
    r = {model: m, "training": {model: training}, "command": f"python -m benchmarks.quality --models {model}",
         "data": {"users": 3000, "items": 11000, "interactions": 26000, "evaluated_users": 3000},
         "params": {"data": {"path": "/x/amazon2014-health", "max_users": 3000}, "sasrec": {"batch_size": 128},
                    "distill": {"max_minutes": 8}, "llm": {"backbone": "smollm2-135m", "num_layers": 4}}}
    if drop is not None:
        r[f"{model}_shuffled"] = {**m, "shuffle_drop": {"ndcg@10": drop}}
    return r


def test_suite_table_marks_each_target(tmp_path):
    d = tmp_path / "suite" / "health"
    d.mkdir(parents=True)
    sasrec = suite_file("sasrec", 0.30, 0.5, epochs=10, train_seconds=120.0, stopped="early stop: no better")
    sasrec["popularity"] = {**sasrec["sasrec"], "ndcg@10": 0.10}
    llm = {"dtype": "bfloat16", "steps": 200, "train_seconds": 480.0, "stopped_by": "max_minutes"}
    files = {"sasrec": sasrec, "sasrec_len10": suite_file("sasrec", 0.28, epochs=5, train_seconds=60.0),
             "llmsrec_paper": suite_file("llmsrec", 0.318, 0.01, **llm),
             "llmsrec": suite_file("llmsrec", 0.32, 0.30, **llm),
             "llmsrec_no_distill_uniform": suite_file("llmsrec", 0.33, 0.2, **llm)}
    files["llmsrec"]["llmsrec"]["valid"] = {"ndcg@10": 0.345}  # evaluate.valid_split; older results have none
    for stem, res in files.items():
        (d / f"{stem}.json").write_text(json.dumps(res))
    doc = render(tmp_path, plot=tmp_path / "out" / "bench.png")
    # 10 epochs of ceil(3000 / 128) = 24 batches: 240 steps in 120 s
    assert "| SASRec, full window | – | 0.3000 | 0.4000 | 0.0750 | 0.1500 | 50.0% | 2.0 | 240 | 0.500 | early stopping |" in doc
    assert "| LLM-SRec, chosen settings | 0.3450 | 0.3200 | 0.4200 | 0.0800 | 0.1600 | 30.0% | 8.0 | 200 | 2.400 | max_minutes |" in doc
    assert "- at least the 10-window SASRec: met (0.3200 vs 0.2800)" in doc
    assert "- at least 1.03x full-window SASRec: met (0.3200 vs 0.3000)" in doc  # no ranks kept: the point decides
    assert "- at least SASRec on the full catalogue: met (0.0800 vs 0.0750)" in doc
    assert "- worse without L_distill and L_uniform: missed (0.3300 vs 0.3200)" in doc
    assert "- at least the 10-window SASRec: met (0.3200 vs 0.2800)" in doc  # no noise flag: a 0.04 gap
    assert "- chosen settings beat the paper's at this budget: met (0.3200 vs 0.3180; within noise)" in doc
    assert (tmp_path / "out" / "suite.png").stat().st_size > 1000 and "](suite.png)" in doc
    assert "backbone `smollm2-135m`, first 4 layers (the paper's row: 4), bfloat16" in doc


def test_kept_ranks_make_the_targets_paired_intervals(tmp_path):
    """With per-user ranks beside the rows, a target is met only when its whole interval clears the bar."""
    import numpy as np
    import pandas as pd

    d = tmp_path / "suite" / "videogames"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    users = np.arange(2000)
    sas = rng.integers(0, 60, 2000)  # ranks among 1+99
    better = np.where(rng.random(2000) < 0.3, 0, sas)  # 30% of users get the positive first
    files = {"sasrec": suite_file("sasrec", 0.30, 0.5, epochs=10, train_seconds=120.0),
             "llmsrec": suite_file("llmsrec", 0.32, 0.30, steps=10, train_seconds=60.0),
             "llmsrec_neutral_titles": suite_file("llmsrec", 0.315, 0.30, steps=10, train_seconds=60.0)}
    files["sasrec"]["popularity"] = {**files["sasrec"]["sasrec"], "ndcg@10": 0.1}
    ranks = {"sasrec": [("sasrec", sas)], "llmsrec": [("llmsrec", better), ("llmsrec_shuffled", sas)],
             "llmsrec_neutral_titles": [("llmsrec", better + (rng.random(2000) < 0.01)),
                                        ("llmsrec_shuffled", sas)]}
    for stem, res in files.items():
        (d / f"{stem}.json").write_text(json.dumps(res))
        pd.concat([pd.DataFrame({"model": m, "user_idx": users, "rank": r, "full_rank": r * 50})
                   for m, r in ranks[stem]]).to_parquet(d / f"{stem}.ranks.parquet")
    doc = render(tmp_path)
    assert "- at least 1.03x full-window SASRec: met (0.3200 vs 0.3000; ratio " in doc
    # neutral titles barely differ from the chosen row: the point gap is there, the interval says it is noise
    line = next(x for x in doc.splitlines() if x.startswith("- the text matters"))
    assert "missed" in line and "vs bar 0.97" in line
    assert "- shuffling costs at least 4%: met (" in doc
    assert "| LLM-SRec, chosen settings | " in doc and "/ SASRec, NDCG@10 [95%]" in doc


def test_research_variants_are_tabled_with_their_overrides_and_paired_intervals(tmp_path):
    import numpy as np
    import pandas as pd

    d = tmp_path / "research" / "health_3k"
    d.mkdir(parents=True)
    users = np.arange(500)
    sas = np.random.default_rng(3).integers(0, 40, 500)
    sasrec = suite_file("sasrec", 0.30, 0.5, epochs=10, train_seconds=120.0)
    sasrec["popularity"] = {**sasrec["sasrec"], "ndcg@10": 0.1}
    variant = suite_file("llmsrec", 0.33, 0.06, steps=400, best_step=180, seconds_per_step=0.7,
                         stopped_by="early_stopping")
    variant["command"] = "python -m benchmarks.quality --set distill.prompt=slots --set distill.max_minutes=6"
    variant["llmsrec"]["valid"] = {"ndcg@10": 0.3512}
    for stem, res, ranks in (("sasrec", sasrec, [("sasrec", sas)]), ("slots", variant, [("llmsrec", sas // 2)])):
        (d / f"{stem}.json").write_text(json.dumps(res))
        pd.concat([pd.DataFrame({"model": m, "user_idx": users, "rank": r, "full_rank": r})
                   for m, r in ranks]).to_parquet(d / f"{stem}.ranks.parquet")
    (d / "NOTE.md").write_text("Measured on one machine.")
    doc = render(tmp_path)
    row = next(x for x in doc.splitlines() if x.startswith("| slots |"))
    assert "`prompt=slots`" in row and "max_minutes" not in row and "| 400 (180) | 0.7 | early_stopping |" in row
    assert row.split("|")[4].strip() == "0.3512"  # every valid user's NDCG@10, beside the early-stopping subset's
    ratio = float(row.split("|")[7].split()[0])
    assert ratio > 1.0 and "Measured on one machine." in doc


def test_warm_start_section_reports_the_reach_ratio_and_the_paired_test(tmp_path):
    from benchmarks.llmsrec_warm_start import reach

    curve = lambda pairs: [{"step": s, "valid_ndcg@10": v, "seconds": 2.0 * s} for s, v in pairs]  # noqa: E731
    warm = curve([(0, 0.30), (20, 0.34), (40, 0.36)])
    scratch = curve([(20, 0.10), (40, 0.25), (60, 0.34), (80, 0.33)])
    target = 0.34
    assert reach(warm, target)["step"] == 20 and reach(scratch, target)["step"] == 60 and reach(warm, 0.9) is None

    def variant(c, test):
        best = max(c, key=lambda r: r["valid_ndcg@10"])
        return {"best_valid_ndcg@10": best["valid_ndcg@10"], "best_step": best["step"], "test_ndcg@10": test,
                "steps_per_epoch": 800,
                "steps": c[-1]["step"], "seconds_per_step": 2.0, "valid_users": 200, "curve": c}

    r = {"split": {"users": 500, "base_interactions": 90, "batch_interactions": 10, "cut_utc": "2000-12-01T00:00:00",
                   "batch_users": 40, "new_users_in_batch": 3, "new_items_in_batch": 7},
         "params": {"budgets": {"sasrec.max_minutes": 2}, "steps": 80, "eval_steps": 20},
         "champion_llmsrec": {"steps": 240, "best_valid_ndcg@10": 0.31},
         "llmsrec": {"warm": variant(warm, 0.35), "scratch": variant(scratch, 0.32)},
         "reach": {"target": target, "warm": reach(warm, target), "scratch": reach(scratch, target),
                   "step_ratio": 20 / 60, "seconds_ratio": 40 / 120},
         "paired_test": {"ratio": 1.094, "ratio_ci": [1.01, 1.2], "n_users": 500, "p_value": 0.02},
         "seconds": {"total": 1500}, "machine": {"cpus": 2}, "command": "python -m benchmarks.llmsrec_warm_start"}
    (tmp_path / "llmsrec_warm_start.json").write_text(json.dumps(r))
    doc = render(tmp_path)
    assert "## LLM-SRec warm start after a batch lands" in doc
    assert "| LLM-SRec warm | 0.3600 | 40 | 0.3500 | 40 | 2.00 |" in doc
    assert "| LLM-SRec scratch | 0.3400 | 60 | 0.3200 | 80 | 2.00 |" in doc
    assert "at step 20 (40 s); scratch got there at step 60 (120 s): 0.33 of the steps" in doc
    assert "before any step): valid NDCG@10 0.3000; the budget is 5% of an epoch (800 steps)" in doc
    assert "warm / scratch test NDCG@10: 1.094 (95% CI 1.010-1.200, 500 users" in doc


def test_retrain_cycle_section_times_each_step_and_says_what_was_served(tmp_path):
    """benchmarks.retrain_cycle's table: a skipped task is '-', the total is judged against the target, and a
    cycle whose model was not served says so instead of claiming an answer."""
    from benchmarks.report import render

    def run(seconds, served, ndcg, passed, regression):
        return {"seconds": seconds, "served": served, "served_model": "llmsrec:new" if served else "llmsrec:old",
                "state": "success", "production": "llmsrec:new", "metrics": {"llmsrec": {"ndcg@10": ndcg}},
                "gate": {"passed": passed, "checks": {"champion_regression": {"value": regression}}}}

    first = run({"distill": 400.0, "package": 5.0, "mark_rejected": 0.0, "total": 900.0}, True, 0.40, True, None)
    cycle = run({"distill": 180.0, "package": 5.0, "mark_rejected": 0.0, "total": 540.0}, True, 0.42, True, 0.036)
    r = {"split": {"base_rows": 900, "base_users": 60, "batch_rows": 100, "split_at": "2000-12-29T23:28:20",
                   "batch_users": 12, "batch_new_users": 2, "batch_new_items": 4},
         "first_minutes": [6, 6], "cycle_minutes": [2, 2], "max_users": None, "machine": {"cores": 2},
         "commit": "abcdef0123", "target_minutes": 15.0, "first_training": first, "cycle": cycle}
    (tmp_path / "cycle").mkdir()
    (tmp_path / "cycle" / "retrain_cycle.json").write_text(json.dumps(r))
    doc = render(tmp_path)
    assert "## The retraining cycle, timed" in doc
    assert "| distill | 400.0 | 180.0 |" in doc and "| mark_rejected | - | - |" in doc
    assert "cycle: 9.0 min from the drop to the first answer of the new model (target <= 15), 0.60x the first " \
           "training; served llmsrec:new." in doc
    assert "retrain 0.4200; the gate passed it (against the champion re-scored on the new candidates: +3.60%)" in doc
    cycle["served"] = False
    (tmp_path / "cycle" / "retrain_cycle.json").write_text(json.dumps(r))
    assert "from the drop to the run's end" in render(tmp_path) and "nothing new served" in render(tmp_path)
