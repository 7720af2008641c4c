"""`dvc repro` with DVC's own CLI in a temporary clone, on small synthetic data and the real SmolLM2.

The whole pipeline runs once per session (tests/data/conftest.py `reproduced`, SMALL_PIPELINE); each
test runs DVC again on its own copy.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import copy_workspace, venv_env

DVC = [sys.executable, "-m", "dvc"]


@pytest.mark.slow
def test_dvc_repro_fresh_clone_then_noop(reproduced, tmp_path):
    ws = copy_workspace(reproduced.ws, tmp_path / "ws")  # the second run writes its run record
    env = reproduced.env  # an empty store before the first run: its model is the first
    first = reproduced.first
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in ("ingest_batches", "ingest", "validate", "prepare", "pretrain_sasrec", "distill", "evaluate", "gate",
                  "report", "package"):
        assert f"Running stage '{stage}'" in first.stdout
    # `srec run` ends with the summary, read from the reports the stages just wrote
    assert "test NDCG@10 on the fixed candidates: popularity" in first.stdout and "package: llmsrec:" in first.stdout
    # Two distillation steps leave LLM-SRec near chance, so the default gate rejects it; with nothing in
    # production it is promoted anyway, as provisional (gate.first_model), into the empty test store.
    gate = json.loads((ws / "reports" / "gate.json").read_text())
    assert set(gate["checks"]) == {"ndcg@10_floor", "lift_over_popularity", "shuffle_drop",
                                                  "champion_regression"}
    package = json.loads((ws / "reports" / "package.json").read_text())
    assert package["decision"] == ("promoted" if gate["passed"] else "provisional")
    assert package["production"] == package["tag"] and package["tag"].startswith("llmsrec:")
    # The package's data version is the hash dvc.lock records for prepare's output.
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    prepared_md5 = next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared")
    from components.serving.registry import get_model

    assert get_model(package["tag"], reproduced.home).info.metadata["data_version"] == prepared_md5

    summary = json.loads((ws / "reports" / "data_summary.json").read_text())
    assert summary["users"] == 300 and summary["items"] <= 200 and summary["interactions"] > 300 * 5
    assert len(pd.read_parquet(ws / "data" / "prepared" / "candidates.parquet")) == 2 * 40
    metrics = json.loads((ws / "reports" / "metrics.json").read_text())
    for key in ("popularity", "sasrec", "sasrec_shuffled", "llmsrec", "llmsrec_shuffled"):
        assert metrics[key]["n_users"] == 40 and 0 <= metrics[key]["ndcg@10"] <= 1
    assert {p.name for p in (ws / "models" / "llmsrec").iterdir()} >= {"adapters.safetensors", "item_table.safetensors"}
    assert (ws / "reports" / "data_docs" / "index.html").is_file()
    assert (ws / "dvc.lock").is_file()

    # DVC's own views fit a terminal: the one metrics file is the headline; every stage's file still reads by target.
    wide = dict(env, COLUMNS="120")
    srec = [str(Path(sys.executable).with_name("srec"))]
    for cmd in (DVC + ["metrics", "show"], srec + ["runs"], DVC + ["metrics", "show", "reports/gate_checks.json", "--json"]):
        shown = subprocess.run(cmd, cwd=ws, env=wide, capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        if "--json" not in cmd:
            assert max(map(len, shown.stdout.splitlines())) <= 120, shown.stdout
    assert "ndcg@10.llmsrec" in subprocess.run(DVC + ["metrics", "show"], cwd=ws, env=wide, capture_output=True,
                                               text=True, timeout=120).stdout
    workspace = next(iter(json.loads(shown.stdout).values()))  # keyed "" (the workspace) by DVC 3.6
    assert set(workspace["data"]["reports/gate_checks.json"]["data"]["checks"]) == set(gate["checks"])

    # The second run only looks in the landing zone (files arrive outside DVC), finds nothing, and so
    # changes nothing: every other stage is skipped.
    second = subprocess.run(DVC + ["repro"], cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert re.findall(r"Running stage '(\w+)'", second.stdout) == ["ingest_batches"], second.stdout
    status = subprocess.run(DVC + ["status", "--json"], cwd=ws, env=env, capture_output=True, text=True, timeout=120)
    assert json.loads(status.stdout) == {"ingest_batches": ["always changed"]}, status.stdout

    # Data outputs are git-ignored: the clone stays clean apart from DVC's lock and metrics files.
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ws, capture_output=True, text=True).stdout
    assert not [line for line in dirty.splitlines() if "data/" in line and "reports/" not in line], dirty


@pytest.mark.slow
def test_dvc_repro_reruns_only_what_a_param_change_touches(reproduced, tmp_path):
    ws = copy_workspace(reproduced.ws, tmp_path / "ws")  # every stage up to date, `prepare` included
    env = venv_env()
    params = (ws / "params.yaml").read_text().replace("num_negatives: 99", "num_negatives: 50")
    Path(ws / "params.yaml").write_text(params)
    out = subprocess.run(DVC + ["repro", "prepare"], cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "Running stage 'prepare'" in out.stdout and "Running stage 'ingest'" not in out.stdout
    cand = pd.read_parquet(ws / "data" / "prepared" / "candidates.parquet")
    assert cand["negatives"].map(len).eq(50).all()


@pytest.mark.slow
def test_make_clean_removes_only_what_the_pipeline_made(reproduced, tmp_path, monkeypatch):
    """Issue 27: `make clean` removed the whole of data/, accepted batches too. Now it removes the generated
    outputs and keeps the raw data and every tracked file; DVC then plans every stage again, and `ingest` (the
    stage the issue saw fail) runs on the batch the store kept.

    Not `dvc repro --dry`: DVC 3.67's dry run fails on any workspace where a stage's input is another stage's
    missing output, a fresh clone included (`failed to reproduce 'ingest': ... data/batches`, DVC issue 9021),
    whatever make clean does; `dvc status` is the plan it would have printed."""
    from components.data import landing
    from tests.dags.test_dag_e2e import new_batch

    ws = copy_workspace(reproduced.ws, tmp_path / "ws")
    env = reproduced.env
    # A real accepted batch in the store (the landing zone's own path, its records in data/landing), and files
    # the pipeline reads but never writes.
    arrived = tmp_path / "week_1.csv"
    new_batch(ws).to_csv(arrived, index=False)
    monkeypatch.chdir(ws)  # the landing CLI's paths are params.yaml's, relative to the workspace
    landing.main(["drop", str(arrived)])
    done = subprocess.run(DVC + ["repro", "ingest_batches"], cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    raw = {"data/downloads/ml-1m.zip": "zip", "models/warm_start/sasrec/config.json": "{}"}
    for rel, text in raw.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    kept = {p.relative_to(ws): p.read_bytes() for top in ("data/batches", "data/landing", "data/incoming",
                                                         "data/downloads", "models/warm_start", "reports/timings")
            for p in (ws / top).rglob("*") if p.is_file()}
    batches = {p.parent.name for p in kept if str(p).startswith("data/batches/") and p.name == "batch.json"}
    assert len(batches) == 1, sorted(map(str, kept))
    generated = ["data/ingested", "data/validated", "data/quarantine", "data/prepared", "models/sasrec",
                 "models/llmsrec", "reports/metrics.json", "reports/gate.json", "reports/run_report.html",
                 "reports/headline.json", "reports/package.json", "reports/sasrec_curve.png", "reports/data_docs"]
    assert all((ws / rel).exists() for rel in generated)

    done = subprocess.run(["make", "clean", f"BIN={Path(sys.executable).parent}"], cwd=ws, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [rel for rel in generated if (ws / rel).exists()], done.stdout
    assert {p: (ws / p).read_bytes() for p in kept if (ws / p).is_file()} == kept, done.stdout
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ws, capture_output=True, text=True).stdout
    assert not [line for line in status.splitlines() if line[:2].strip() == "D"], status  # no tracked file deleted

    plan = subprocess.run(DVC + ["status", "--json"], cwd=ws, env=env, capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr
    assert set(json.loads(plan.stdout)) == {"ingest_batches", "ingest", "validate", "prepare", "pretrain_sasrec",
                                            "distill", "evaluate", "gate", "report", "package"}, plan.stdout
    again = subprocess.run(DVC + ["repro", "ingest"], cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads((ws / "data" / "ingested" / "ingest.json").read_text())["batch_ids"] == sorted(batches)
