"""The quality benchmark's one entry point, end to end on a small `files` dataset."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from components.config import SyntheticParams
from components.data.sources.synthetic import generate
from tests.model.conftest import REPO, subprocess_env


@pytest.mark.slow
def test_quality_benchmark_runs_the_real_stages(tmp_path):
    interactions, items = generate(SyntheticParams(num_users=300, num_items=200, num_topics=10), seed=4)
    data = tmp_path / "data"
    data.mkdir()
    # MovieLens-like column names, so --column is exercised as in the ML-1M command
    interactions[["user_id", "item_id", "timestamp"]].rename(columns={"item_id": "movie_id"}).to_csv(
        data / "interactions.tsv", sep="\t", index=False)
    items[["item_id", "title"]].rename(columns={"item_id": "movie_id"}).to_csv(data / "items.tsv", sep="\t",
                                                                                 index=False)
    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "benchmarks.quality", "--models", "popularity,sasrec", "--source", "files",
           "--path", str(data), "--column", "item_id=movie_id", "--max-users", "150",
           "--set", "sasrec.epochs=2", "--set", "sasrec.hidden=16", "--set", "sasrec.threads=1",
           "--workdir", str(tmp_path / "ws"), "--out", str(out)]
    run = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    res = json.loads(out.read_text())
    for key in ("popularity", "sasrec", "sasrec_shuffled"):
        assert {"ndcg@10", "hr@10", "ndcg@20", "hr@20", "n_users"} <= set(res[key])
        assert res[key]["n_users"] == 150
    assert list(res["seconds"]) == ["ingest", "validate", "prepare", "pretrain_sasrec", "evaluate"]
    assert all(s > 0 for s in res["seconds"].values())
    assert res["epochs"] == 2 and res["seconds_per_epoch"] > 0 and res["median_seconds_per_epoch"] > 0
    assert 50 < res["peak_rss_mb"] < 8000
    assert res["params"]["data"]["columns"] == {"item_id": "movie_id"} and res["params"]["sasrec"]["hidden"] == 16
    # It really ran on the given files: the scratch workspace's prepared items are those movie ids.
    prepared = pd.read_parquet(tmp_path / "ws" / "data" / "prepared" / "items.parquet")
    assert set(prepared["item_id"]) <= set(items["item_id"])
    assert "sasrec" in run.stdout and "peak RSS" in run.stdout

    # --resume keeps the stages whose command and params are unchanged (how a GPU worker continues a
    # CPU run) and reruns the changed stage and everything after it.
    again = subprocess.run([*cmd[:-4], "--set", "sasrec.epochs=3", "--workdir", str(tmp_path / "ws"), "--resume",
                            "--out", str(out)], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    res2 = json.loads(out.read_text())
    assert all(res2["seconds"][s] == res["seconds"][s] for s in ("ingest", "validate", "prepare"))
    assert "== prepare: kept from" in again.stdout and "== pretrain_sasrec: python" in again.stdout
    assert res2["epochs"] == 3 and set(res2["machine_per_stage"]) == set(res2["seconds"])


def test_unknown_model_is_refused(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.quality", "--models", "popularity,nosuch", "--source", "synthetic",
           "--out", str(tmp_path / "r.json")]
    run = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "unknown model 'nosuch'" in run.stderr
    assert not (tmp_path / "r.json").exists()
