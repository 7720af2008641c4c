"""Fixtures for gate, packaging and serving: a small but real pipeline output.

`pipeline_outputs` is what `dvc repro` leaves before `gate`: prepared synthetic data, a SASRec
checkpoint, an LLM-SRec checkpoint on the *real* SmolLM2 backbone (the service loads the backbone by
name, so a toy LLM would not do) and real `evaluate` reports. The adapters are untrained (no quality
is claimed here); the 1 + 9 candidate protocol puts every positive in the top 10, so any model's
NDCG@10 is > 0 and the champion comparison can always fail. Every test uses its own BENTOML_HOME.
`pipeline_outputs` and `promoted_home` live in tests/conftest.py: the bad-input corpus uses them too.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

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


_SCORER_METRICS: list = []  # the scorer's Prometheus histograms, made once per process (see service_module)


@contextmanager
def service_module(home: Path):
    """components.serving.service imported afresh against the BentoML store at `home` (it resolves the model
    to serve at import), on one torch thread; BentoML's store and the thread count are restored after.
    Every import shares the first one's scorer histograms: Prometheus refuses a second metric of a name."""
    import torch
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models.model import ModelStore

    before_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    store = BentoMLContainer.model_store.get()
    before_home = BentoMLContainer.bentoml_home.get()
    BentoMLContainer.bentoml_home.set(str(home))
    BentoMLContainer.model_store.set(ModelStore(str(home / "models")))
    sys.modules.pop("components.serving.service", None)
    try:
        import components.serving.service as svc

        if _SCORER_METRICS:
            svc._ScorerMetrics._instance = _SCORER_METRICS[0]
        try:
            yield svc
        finally:
            if svc._ScorerMetrics._instance is not None:
                _SCORER_METRICS[:] = [svc._ScorerMetrics._instance]
    finally:
        BentoMLContainer.bentoml_home.set(before_home)
        BentoMLContainer.model_store.set(store)
        sys.modules.pop("components.serving.service", None)
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
