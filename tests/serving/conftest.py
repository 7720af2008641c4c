"""Fixtures for gate, packaging and serving: a small but real pipeline output.

`pipeline_outputs` is what `dvc repro` leaves before `gate`: prepared synthetic data, a SASRec
checkpoint, an LLM-SRec checkpoint on the *real* SmolLM2 backbone (the service loads the backbone by
name, so a toy LLM would not do) and real `evaluate` reports. The adapters are untrained (no quality
is claimed here); the 1 + 9 candidate protocol puts every positive in the top 10, so any model's
NDCG@10 is > 0 and the champion comparison can always fail. Every test uses its own BENTOML_HOME.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, venv_env

SMALL_PARAMS = {"seed": 3, "gate": {"model": "llmsrec", "min_ndcg_at_10": 0.0, "min_lift_over_popularity": None,
                                    "min_shuffle_drop": None, "max_regression": 0.02, "champion_users": None,
                                    "first_model": "provisional"},
                "package": {"include_backbone": False}, "llm": {"device": "cpu", "dtype": "auto"}}


@pytest.fixture(scope="session")
def pipeline_outputs(tmp_path_factory) -> Path:
    import yaml

    from components.data.sources.synthetic import SyntheticConfig, generate
    from components.evaluate import evaluate
    from components.io import write_json, write_parquet
    from components.llm.backbone import load_backbone
    from components.llm.model import LLMSRec, LLMSRecConfig
    from components.models import Popularity
    from components.models.sasrec import SASRec, SASRecConfig
    from components.prepare import prepare
    from components.sequences import Prepared

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: threads only contend
    try:
        root = tmp_path_factory.mktemp("pipeline")
        inter, items = generate(SyntheticConfig(num_users=60, num_items=40, num_topics=4, max_length=30), seed=3)
        res = prepare(inter, items, {}, {"num_negatives": 9, "max_users": 16}, seed=3)
        prepared = root / "data" / "prepared"
        for name in ("items", "users", "sequences", "candidates"):
            write_parquet(res[name], prepared / f"{name}.parquet")
        write_json(prepared / "meta.json", res["summary"])
        data = Prepared.load(prepared)

        torch.manual_seed(0)
        sasrec = SASRec(SASRecConfig(hidden=16, max_len=20), data.item_ids, data.item_mapping_hash).eval()
        sasrec.save(root / "models" / "cfsrec")
        backbone = load_backbone("smollm2-135m", device="cpu")
        titles = [""] + res["items"].sort_values("idx")["title"].tolist()
        model = LLMSRec(LLMSRecConfig(backbone=backbone.name), sasrec, backbone, titles, data.item_ids,
                        data.item_mapping_hash, cfsrec_path="models/cfsrec").eval()
        model.build_item_table(64)
        model.save(root / "models" / "llmsrec")

        pop = Popularity.fit(data.train_items(), data.item_ids, data.item_mapping_hash)
        metrics, per_user = evaluate(data, {"popularity": pop, "cfsrec": sasrec, "llmsrec": model},
                                     ["cfsrec", "llmsrec"], seed=3, log=lambda *_: None)
        write_json(root / "reports" / "metrics.json", metrics)
        write_parquet(per_user, root / "reports" / "per_user.parquet")
        (root / "params.yaml").write_text(yaml.safe_dump(SMALL_PARAMS, sort_keys=False))
        return root
    finally:
        torch.set_num_threads(before)


def stage_env(home: Path) -> dict:
    env = venv_env()
    env.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="True", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    env.pop("LLMSREC_MODEL_TAG", None)
    return env


def run_stage(ws: Path, home: Path, module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """A stage as DVC runs it: its module's CLI, in the workspace, with the store at `home`."""
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=ws, env=stage_env(home), capture_output=True,
                         text=True, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"{module} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def gate(ws: Path, home: Path, **kw) -> subprocess.CompletedProcess:
    return run_stage(ws, home, "components.gate", "--metrics", "reports/metrics.json", "--per-user",
                     "reports/per_user.parquet", "--prepared", "data/prepared", "--out", "reports/gate.json", **kw)


def package(ws: Path, home: Path, **kw) -> subprocess.CompletedProcess:
    return run_stage(ws, home, "components.package", "--gate", "reports/gate.json", "--metrics",
                     "reports/metrics.json", "--prepared", "data/prepared", "--cfsrec", "models/cfsrec", "--llmsrec",
                     "models/llmsrec", "--out", "reports/package.json", **kw)


@pytest.fixture
def workspace(pipeline_outputs, tmp_path) -> Path:
    """A private copy of the pipeline outputs: tests edit metrics and params freely."""
    ws = tmp_path / "ws"
    shutil.copytree(pipeline_outputs, ws)
    return ws


@pytest.fixture(scope="session")
def promoted_home(pipeline_outputs, tmp_path_factory) -> Path:
    """A BentoML home whose production model is the fixture model (gate passed, packaged): shared by the
    serving tests, which only read it."""
    home = tmp_path_factory.mktemp("bentoml_home")
    gate(pipeline_outputs, home)
    package(pipeline_outputs, home)
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("LLMSREC_"):
            monkeypatch.delenv(key)
