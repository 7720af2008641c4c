"""The GPU check and the throughput benchmark run end to end (on the CPU, with a tiny local Llama),
so the scripts meant for other machines do not rot between GPU sessions."""

from __future__ import annotations

import json


def test_gpu_check_dry_run_on_cpu(tmp_path, tiny_llama_dir):
    from benchmarks.gpu_check import main

    main(["--backbone", str(tiny_llama_dir), "--device", "cpu", "--steps", "2", "--batch-size", "4",
          "--out", str(tmp_path / "gpu.json")])
    r = json.loads((tmp_path / "gpu.json").read_text())
    assert r["agrees"] and r["rel_diff_fp32"] < 1e-4  # same device, same dtype: the same loss
    assert r["seconds_per_step"] > 0 and r["item_table_items_per_s"] > 0


def test_distill_throughput_runs_and_both_paths_agree(tmp_path, tiny_llama_dir):
    from benchmarks.distill_throughput import main

    main(["--backbone", str(tiny_llama_dir), "--dtype", "fp32", "--steps", "1", "--eval-users", "4",
          "--items", "16", "--out", str(tmp_path / "tp.json")])
    r = json.loads((tmp_path / "tp.json").read_text())
    rows = {row["name"]: row for row in r["rows"]}
    assert "today" in rows and "chosen (params.yaml)" in rows and len(rows) >= 7
    assert all(row["examples_per_s"] > 0 and row["eval_users_per_s"] > 0 for row in rows.values())
    exact = rows["+ kv_reuse: frozen (exact)"]
    assert exact["loss_vs_today_relative_difference"] < 1e-4  # the exact change computes the same loss
    assert exact["eval_ranks_checksum"] == rows["today"]["eval_ranks_checksum"]  # and the same ranking
    assert set(rows["today"]["profile"]) >= {"tokenize_s", "user_prompts_s", "item_prompts_s", "backward_s"}
    assert rows["+ num_layers: 4"]["profile"] is None  # only the rows asked for are profiled
    assert rows["+ num_layers: 4"]["layers"] == 2  # the tiny model has 2 layers: a cut beyond them keeps all
