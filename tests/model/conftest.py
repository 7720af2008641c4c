"""Fixtures for model tests: small synthetic data run through the real `prepare` stage, tiny configs."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from components.config import SyntheticParams
from components.data.sequences import Prepared
from components.data.sources.synthetic import generate
from components.io import write_parquet
from components.stages import prepare

REPO = Path(__file__).resolve().parents[2]


# A config small enough to train in seconds on one core, big enough to learn the synthetic order.
TINY_SASREC = {"hidden": 32, "num_blocks": 2, "num_heads": 1, "dropout": 0.1, "max_len": 32, "lr": 0.005,
               "batch_size": 64, "loss": "ce", "epochs": 20, "eval_every": 1, "patience": 3,
               "warm_start_from": None, "warm_start_mismatch": "error", "seed": None, "threads": 1}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tests' tensors are small: a second OpenMP thread only fights other processes. Restored after,
    so tests elsewhere in the session keep torch's default."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_prepared(dest: Path, *, num_users: int = 400, num_items: int = 200, num_topics: int = 10,
                  seed: int = 7) -> Path:
    """Synthetic interactions written as the validated tables, then the real prepare stage's main()."""
    interactions, items = generate(SyntheticParams(num_users=num_users, num_items=num_items,
                                                   num_topics=num_topics), seed)
    write_parquet(interactions, dest / "validated" / "interactions.parquet")
    write_parquet(items, dest / "validated" / "items.parquet")
    params = dest / "prepare_params.yaml"
    params.write_text(yaml.safe_dump({"seed": seed, "data": {"min_user_interactions": 5, "min_item_interactions": 5,
                                                               "max_users": None},
                                      "candidates": {"num_negatives": 99, "max_users": 10000}}))
    out = dest / "prepared"
    prepare.main(["--params", str(params), "--in", str(dest / "validated"), "--out", str(out),
                  "--summary", str(dest / "data_summary.json")])
    return out


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def prepared(prepared_dir) -> Prepared:
    return Prepared.load(prepared_dir)


def write_params(path: Path, **sasrec) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "seed": 11, "sasrec": {**TINY_SASREC, **sasrec},
        "evaluate": {"models": ["popularity", "sasrec"], "shuffle": ["sasrec"], "full_catalogue": True,
                     "shuffle_seed": None, "batch_size": 256, "threads": 1}}))
    return path


def stage_argv(name: str) -> list[str]:
    """The stage's command exactly as dvc.yaml declares it, with this interpreter."""
    argv = shlex.split(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][name]["cmd"])
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def stage_outs(name: str) -> list[str]:
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][name]
    return [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def run_stage(name: str, workspace: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(stage_argv(name), cwd=workspace, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def kill_stage_when(name: str, workspace: Path, ready, timeout: float) -> None:
    """Start dvc.yaml's command for `name` and SIGKILL it once `ready()` holds (or it ended, or `timeout`)."""
    import signal
    import time

    proc = subprocess.Popen(stage_argv(name), cwd=workspace, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # polling the state file: the condition itself, not a guess at timing
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
