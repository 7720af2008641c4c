"""Airflow in tests: a temporary AIRFLOW_HOME with its own sqlite metadata DB, never ~/airflow.

Airflow reads its configuration once, at import, so the environment is set before anything here
imports it. The DB is migrated once per session (`airflow db migrate`, a few seconds) and copied for
each test that runs DAGs: a fresh copy is cheaper than a second migration and keeps tests independent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def airflow_env(home: Path, dags: Path, bentoml_home: Path | None = None) -> dict[str, str]:
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }
    if bentoml_home is not None:
        env["BENTOML_HOME"] = str(bentoml_home)
    return env


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory) -> Path:
    """This process's Airflow: a temp home pointed at the repository's dags/, migrated once."""
    home = tmp_path_factory.mktemp("airflow_home")
    os.environ.update(airflow_env(home, REPO / "dags"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=300)
    return home


@pytest.fixture
def fresh_airflow_home(airflow_home, tmp_path) -> Path:
    """A private copy of the migrated DB, for a test that runs DAGs in another workspace."""
    home = tmp_path / "airflow_home"
    home.mkdir()
    shutil.copy2(airflow_home / "airflow.db", home / "airflow.db")
    return home


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    """A random-weight 2-layer Llama with SmolLM2's real tokenizer, saved as a local HF model directory,
    so the DAG's distill/evaluate/gate stages take seconds. `llm.backbone` accepts such a directory;
    the real SmolLM2 runs in tests/data/test_pipeline_dvc.py."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    from components.llm.backbone import dense_from_gguf, packaged_gguf

    out = tmp_path_factory.mktemp("tiny_llm")
    tok = AutoTokenizer.from_pretrained(dense_from_gguf(packaged_gguf("smollm2-135m"))[0])
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    LlamaModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out
