"""The distill stage resumes after kill -9: through dvc.yaml's own command, on a tiny local Llama."""

from __future__ import annotations

import json
import shutil

import torch
import yaml
from safetensors.torch import load_file

from tests.model.conftest import kill_stage_when, run_stage, stage_outs


def _state_step(root) -> int:
    steps = [json.loads(p.read_text())["progress"]["step"] for p in root.glob("*/state.json")]
    return max(steps, default=0)


def test_kill_9_then_restart_resumes_and_ends_where_an_uninterrupted_run_ends(tmp_path, prepared_dir, teacher,
                                                                             tiny_llama_dir):
    params = {"seed": 11, "llm": {"backbone": str(tiny_llama_dir), "device": "cpu", "dtype": "fp32",
                                  "num_layers": None},  # the tiny LLM has 2 layers
              "distill": {"batch_size": 4, "lr": 0.001, "epochs": 1, "max_minutes": None, "eval_every": 0.1,
                          "valid_users": 12, "readout": "token",
                          "patience": 100, "targets": "all", "negatives": "in_batch", "num_negatives": 1,
                          "prompt": "text_first_compact", "item_batch_size": 32,
                          # Cached keys/values equal recomputed ones only to float rounding; without the cache
                          # both runs compute every step identically, so the comparison below can be exact.
                          "kv_cache_mb": 0}}
    workspaces = []
    for name in ("killed", "reference"):
        ws = tmp_path / name
        shutil.copytree(prepared_dir, ws / "data" / "prepared")
        teacher.save(ws / "models" / "sasrec")
        (ws / "params.yaml").write_text(yaml.safe_dump(params))
        workspaces.append(ws)
    ws, ref = workspaces
    state_root = ws / "models" / ".resume" / "distill"

    kill_stage_when("distill", ws, lambda: _state_step(state_root) >= 30, timeout=240)
    k = _state_step(state_root)
    assert k >= 30, f"the run was not interrupted mid-way (step {k})"
    assert not (ws / "models" / "llmsrec" / "config.json").exists()

    for out in stage_outs("distill"):  # what DVC does before re-running the stage
        shutil.rmtree(ws / out, ignore_errors=True)
    second = run_stage("distill", ws, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "distill: resuming after epoch" in second.stdout
    summary = json.loads((ws / "reports" / "distill_train.json").read_text())
    # Names are no metric: the checkpoint's training.json keeps them (reports/distill_train.json: numbers only).
    assert json.loads((ws / "models" / "llmsrec" / "training.json").read_text())["stopped_by"] == "epochs"
    record = json.loads((ws / "reports" / "timings" / "distill.json").read_text())  # the run's history
    assert record["resumed_from_step"] == k and "resumed_from_step" not in summary
    assert not list(state_root.glob("*/state.json"))  # finished: the resume state is gone

    full = run_stage("distill", ref, timeout=600)
    assert full.returncode == 0, full.stderr
    ref_summary = json.loads((ref / "reports" / "distill_train.json").read_text())
    assert summary["steps"] == ref_summary["steps"] and summary["best_step"] == ref_summary["best_step"]
    assert abs(summary["best_valid_ndcg@10"] - ref_summary["best_valid_ndcg@10"]) <= 0.01 * ref_summary["best_valid_ndcg@10"]
    a = load_file(str(ws / "models" / "llmsrec" / "adapters.safetensors"))
    b = load_file(str(ref / "models" / "llmsrec" / "adapters.safetensors"))
    for key in b:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    curve = json.loads((ws / "reports" / "distill_curve.json").read_text())
    ref_curve = json.loads((ref / "reports" / "distill_curve.json").read_text())
    assert [r["step"] for r in curve] == [r["step"] for r in ref_curve]  # the curve before the kill is kept
