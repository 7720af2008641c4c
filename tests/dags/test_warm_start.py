"""The staged warm start is a declared input of `pretrain_sasrec`: dvc.lock pins what training started from.

The DAG's `prepare_warm_start` step (components.orchestration.release.stage_warm_start) on a fresh clone
with DVC's own CLI, the stages up to `pretrain_sasrec` on small synthetic data: a fresh clone trains with
nothing staged; `previous` stages the last checkpoint and changes the dep's hash in dvc.lock; staging the
model that was just trained, with nothing else changed, re-runs nothing; `none` empties the folder again.
(`champion` is the same copy from the production package: tests/dags/test_dag_e2e.py.)

The data stages run once per module (`prepared`); each test trains on its own copy.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.orchestration import graph
from components.orchestration.release import WARM_START_MARKER, stage_warm_start
from tests.conftest import copy_workspace, deep_update, make_workspace, venv_env

STAGED = "models/warm_start/sasrec"
SMALL = {
    "data": {"synthetic": {"num_users": 200, "num_items": 200, "num_topics": 12}},
    "candidates": {"max_users": 32},
    "sasrec": {"epochs": 1, "hidden": 32, "num_blocks": 1, "threads": 1, "batch_size": 64},
}


def repro(ws: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "dvc", "repro", "pretrain_sasrec"], cwd=ws, env=venv_env(),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A fresh clone on SMALL after `dvc repro prepare`: the data stages done, nothing trained or staged.
    Tests copy it (`copy_workspace`)."""
    ws = make_workspace(tmp_path_factory.mktemp("prepared") / "ws", SMALL)
    out = subprocess.run([sys.executable, "-m", "dvc", "repro", "prepare"], cwd=ws, env=venv_env(),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return ws


def staged_hash(ws: Path) -> str:
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    return next(d["md5"] for d in lock["stages"]["pretrain_sasrec"]["deps"] if d["path"] == STAGED)


def warm_start_summary(ws: Path) -> dict | None:
    return json.loads((ws / "models" / "sasrec" / "training.json").read_text())["warm_start"]


@pytest.mark.slow
def test_the_staged_warm_start_is_pinned_in_dvc_lock(prepared, tmp_path):
    ws = copy_workspace(prepared, tmp_path / "ws")
    assert sorted(p.name for p in (ws / STAGED).iterdir()) == [WARM_START_MARKER]  # in git: every clone has it
    stages = graph.pipeline_stages(ws)
    assert STAGED in next(s for s in stages if s.address == "pretrain_sasrec").deps

    # A fresh clone: nothing staged, trained from scratch; the lock holds the empty folder's hash.
    repro(ws)
    empty = staged_hash(ws)
    assert warm_start_summary(ws) is None

    # A params change, then `previous`: the last checkpoint is staged, recorded, and trained from.
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["sasrec"]["epochs"] = 2
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    info = stage_warm_start(ws, stages, "previous", log=lambda *_: None)
    assert info["source"] == str(ws / "models" / "sasrec") and (ws / STAGED / "config.json").is_file()
    assert "Running stage 'pretrain_sasrec'" in repro(ws).stdout
    warm = staged_hash(ws)
    assert warm != empty
    assert warm_start_summary(ws)["staged"] and warm_start_summary(ws)["matched_items"] > 100

    # Again, nothing changed: the checkpoint to stage is the one just trained, so the folder stays as
    # dvc.lock records it and DVC re-runs nothing (else every run would retrain the model from itself).
    info = stage_warm_start(ws, stages, "previous", log=lambda *_: None)
    assert info["unchanged"] and info["source"] is None
    # (ingest_batches runs every time, files arriving outside DVC; with nothing new it changes nothing.)
    assert re.findall(r"Running stage '(\w+)'", repro(ws).stdout) == ["ingest_batches"] and staged_hash(ws) == warm

    # `none`: the folder is emptied (its README stays), so the stage re-runs from scratch.
    stage_warm_start(ws, stages, "none", log=lambda *_: None)
    assert sorted(p.name for p in (ws / STAGED).iterdir()) == [WARM_START_MARKER]
    assert "Running stage 'pretrain_sasrec'" in repro(ws).stdout
    assert staged_hash(ws) == empty and warm_start_summary(ws) is None


@pytest.mark.slow
def test_the_warm_start_is_not_changed_under_a_running_training(prepared, tmp_path):
    """A `dvc repro` by hand trains from the staged checkpoint while the DAG's prepare_warm_start wants to
    change the folder: DVC records the folder only when training ends, so changing it now would make
    dvc.lock pin a start the model never had. DVC's own lock says the folder is in use; it stays."""
    import signal
    import time

    import psutil

    from components.errors import DataError

    ws = copy_workspace(prepared, tmp_path / "ws")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    (ws / "params.yaml").write_text(yaml.safe_dump(deep_update(params, {"sasrec": {"epochs": 4}}), sort_keys=False))
    stages = graph.pipeline_stages(ws)
    repro(ws)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["sasrec"]["epochs"] = 5  # something changed, so the last checkpoint is staged and trained from
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stage_warm_start(ws, stages, "previous", log=lambda *_: None)["source"]
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-s", "pretrain_sasrec"], cwd=ws, env=venv_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = ws / "models" / ".resume" / "pretrain_sasrec"
    deadline = time.time() + 300
    while not list(state.glob("*/state.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # the resume state after epoch 1: the run has read the staged checkpoint
    trainer = None
    for p in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []:
        try:
            if "components.stages.pretrain_sasrec" in p.cmdline():
                trainer = p
        except psutil.NoSuchProcess:  # a shell between dvc and the stage may be gone
            continue
    assert trainer is not None, f"the training ended before it could be paused: {proc.communicate()[0][-2000:]}"
    trainer.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(DataError, match="in use by a running dvc command"):
            stage_warm_start(ws, stages, "none", log=lambda *_: None)
    finally:
        trainer.send_signal(signal.SIGCONT)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    assert (ws / STAGED / "config.json").is_file() and warm_start_summary(ws)["staged"]  # what it trained from
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", "pretrain_sasrec"], cwd=ws,
                            env=venv_env(), capture_output=True, text=True, check=True)
    assert "pretrain_sasrec" not in json.loads(status.stdout)  # and dvc.lock records that same folder
