"""Fixtures for gate, packaging and serving: a small but real pipeline output.

`pipeline_outputs` is what `dvc repro` leaves before `gate`: prepared synthetic data, a SASRec
checkpoint, an LLM-SRec checkpoint on the *real* SmolLM2 backbone (the service loads the backbone by
name, so a toy LLM would not do) and real `evaluate` reports. The adapters are untrained (no quality
is claimed here); the 1 + 9 candidate protocol puts every positive in the top 10, so any model's
NDCG@10 is > 0 and the champion comparison can always fail. Every test uses its own BENTOML_HOME.
`pipeline_outputs` and `promoted_home` live in tests/conftest.py: the bad-input corpus uses them too.
`two_versions` (a champion and a challenger packaged into one home) is built once for the registry and
package-safety tests.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from benchmarks import small_package
from benchmarks.small_package import GATE_ARGS, OPEN_GATE, PACKAGE_ARGS
from tests.conftest import venv_env

SMALL_PARAMS = {"seed": 3, "gate": OPEN_GATE, "package": {"include_backbone": False},
                "llm": {"device": "cpu", "dtype": "auto"}}


def stage_env(home: Path) -> dict:
    return {**small_package.stage_env(home), "PATH": venv_env()["PATH"]}


def run_stage(ws: Path, home: Path, module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """A stage as DVC runs it (see benchmarks.small_package.run_stage), failing the test when it fails."""
    out = small_package.run_stage(ws, home, module, *args, env=stage_env(home))
    if check and out.returncode != 0:
        raise AssertionError(f"{module} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def gate(ws: Path, home: Path, **kw) -> subprocess.CompletedProcess:
    return run_stage(ws, home, "components.stages.gate", *GATE_ARGS, **kw)


def package(ws: Path, home: Path, **kw) -> subprocess.CompletedProcess:
    return run_stage(ws, home, "components.stages.package", *PACKAGE_ARGS, **kw)


@pytest.fixture
def workspace(pipeline_outputs, tmp_path) -> Path:
    """A private copy of the pipeline outputs: tests edit metrics and params freely."""
    ws = tmp_path / "ws"
    shutil.copytree(pipeline_outputs, ws)
    return ws


@pytest.fixture(scope="session")
def two_versions(pipeline_outputs, tmp_path_factory) -> SimpleNamespace:
    """Two packaged versions of the fixture model, as a retrain on re-written data files leaves them (another
    content hash, so another version), made once per session; tests copy what they change.

    `home`, `ws`: the BentoML home after both `package` runs, the `challenger` in production and the
    `champion` (packaged first) before it, and the workspace the challenger was packaged from.
    `before_home`, `before_ws`: the same just before the challenger's `package`, its gate already run
    against the champion."""
    root = tmp_path_factory.mktemp("two_versions")
    ws, home = root / "ws", root / "home"
    shutil.copytree(pipeline_outputs, ws)
    gate(ws, home)
    package(ws, home)
    champion = registry_state(home)["production"]
    other_content(ws)
    gate(ws, home)
    shutil.copytree(home, root / "before" / "home")
    shutil.copytree(ws, root / "before" / "ws")
    package(ws, home)
    challenger = registry_state(home)["production"]
    assert challenger != champion
    return SimpleNamespace(before_home=root / "before" / "home", before_ws=root / "before" / "ws", home=home, ws=ws,
                           champion=champion, challenger=challenger)


@contextmanager
def bentoml_store(home: Path):
    """BentoML's store at `home` while services are built in this process (as BentoML's own pytest plugin
    points its container at a test home), on one torch thread; both restored after. The services read
    nothing at import, so nothing is re-imported."""
    import torch
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models.model import ModelStore

    before_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    store = BentoMLContainer.model_store.get()
    before_home = BentoMLContainer.bentoml_home.get()
    BentoMLContainer.bentoml_home.set(str(home))
    BentoMLContainer.model_store.set(ModelStore(str(home / "models")))
    try:
        yield
    finally:
        BentoMLContainer.bentoml_home.set(before_home)
        BentoMLContainer.model_store.set(store)
        torch.set_num_threads(before_threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("LLMSREC_"):
            monkeypatch.delenv(key)


def registry_state(home: Path) -> dict:
    """The registry's pointer file as stored: `{production, events}`."""
    return json.loads((home / "registry" / "llmsrec.json").read_text())


def other_content(ws: Path) -> None:
    """The same model on re-written data files: another content hash, so `package` stores a new version."""
    seq = ws / "data" / "prepared" / "sequences.parquet"
    pd.read_parquet(seq).to_parquet(seq, index=False, compression="gzip")
