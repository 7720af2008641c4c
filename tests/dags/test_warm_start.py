"""The staged warm starts are declared inputs of `pretrain_sasrec` and `distill`: dvc.lock pins what each
model started from.

The DAG's `prepare_warm_start` step (components.orchestration.release.stage_warm_start) on a fresh clone
with DVC's own CLI, the stages up to `distill` on small synthetic data and a tiny random-weight LLM: a fresh
clone trains with nothing staged; `previous` stages both last checkpoints (SASRec's, LLM-SRec's adapters)
and changes both deps' hashes in dvc.lock; staging the models that were just trained, with nothing else
changed, re-runs nothing; `none` empties both folders again. (`champion` is the same copy from the
production package: tests/dags/test_dag_e2e.py.)

The data stages run once per module (`prepared`); each test trains on its own copy.
"""

from __future__ import annotations

import copy
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
STAGED_ADAPTERS = "models/warm_start/llmsrec"
TRAINING = ("pretrain_sasrec", "distill")  # the stages that read the staged folders, in DVC's order
SMALL = {
    "data": {"synthetic": {"num_users": 200, "num_items": 200, "num_topics": 12}},
    "candidates": {"max_users": 32},
    "sasrec": {"epochs": 1, "hidden": 32, "num_blocks": 1, "threads": 1, "batch_size": 64},
    "llm": {"dtype": "float32", "num_layers": None},  # the tiny LLM (`backbone` set by `prepared`) has 2 layers
    "distill": {"max_steps": 2, "batch_size": 8, "valid_users": 8, "eval_every": 1.0, "item_batch_size": 128},
}


def repro(ws: Path, *stages: str) -> subprocess.CompletedProcess:
    """`dvc repro -s` of the training stages (default pretrain_sasrec alone), as the DAG runs each stage: the
    data stages are done (`prepared`), and `ingest_batches`, which runs on every plain `dvc repro` (files
    arrive outside DVC), would only add a process per call."""
    out = subprocess.run([sys.executable, "-m", "dvc", "repro", "-s", *(stages or ("pretrain_sasrec",))], cwd=ws,
                         env=venv_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_llm_dir) -> Path:
    """A fresh clone on SMALL after `dvc repro prepare`: the data stages done, nothing trained or staged.
    Tests copy it (`copy_workspace`)."""
    ws = make_workspace(tmp_path_factory.mktemp("prepared") / "ws", deep_update(
        copy.deepcopy(SMALL), {"llm": {"backbone": str(tiny_llm_dir)}}))
    out = subprocess.run([sys.executable, "-m", "dvc", "repro", "prepare"], cwd=ws, env=venv_env(),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return ws


def staged_hash(ws: Path, stage: str = "pretrain_sasrec", path: str = STAGED) -> str:
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    return next(d["md5"] for d in lock["stages"][stage]["deps"] if d["path"] == path)


def staged_hashes(ws: Path) -> tuple[str, str]:
    return staged_hash(ws), staged_hash(ws, "distill", STAGED_ADAPTERS)


def warm_start_summary(ws: Path) -> dict | None:
    return json.loads((ws / "models" / "sasrec" / "training.json").read_text())["warm_start"]


def adapters_summary(ws: Path) -> dict:
    return json.loads((ws / "models" / "llmsrec" / "training.json").read_text())


@pytest.mark.slow
def test_the_staged_warm_start_is_pinned_in_dvc_lock(prepared, tmp_path):
    ws = copy_workspace(prepared, tmp_path / "ws")
    for folder in (STAGED, STAGED_ADAPTERS):  # in git: every clone has them
        assert sorted(p.name for p in (ws / folder).iterdir()) == [WARM_START_MARKER]
    stages = graph.pipeline_stages(ws)
    assert STAGED in next(s for s in stages if s.address == "pretrain_sasrec").deps
    assert STAGED_ADAPTERS in next(s for s in stages if s.address == "distill").deps

    # A fresh clone: nothing staged, both trained from scratch; the lock holds the empty folders' hashes.
    repro(ws, *TRAINING)
    empty = staged_hashes(ws)
    assert warm_start_summary(ws) is None and adapters_summary(ws)["warm_start"] is None
    assert adapters_summary(ws)["initial_valid_ndcg@10"] is None  # from scratch: no step-0 validation

    # A params change, then `previous`: both last checkpoints are staged, recorded, and trained from.
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["sasrec"]["epochs"] = 2
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    info = stage_warm_start(ws, stages, "previous", log=lambda *_: None)["stages"]
    assert info["pretrain_sasrec"]["source"] == str(ws / "models" / "sasrec") and (ws / STAGED / "config.json").is_file()
    assert info["distill"]["source"] == str(ws / "models" / "llmsrec")
    assert (ws / STAGED_ADAPTERS / "adapters.safetensors").read_bytes() == \
        (ws / "models" / "llmsrec" / "adapters.safetensors").read_bytes()
    assert re.findall(r"Running stage '(\w+)'", repro(ws, *TRAINING).stdout) == list(TRAINING)
    warm = staged_hashes(ws)
    assert warm[0] != empty[0] and warm[1] != empty[1]
    assert warm_start_summary(ws)["staged"] and warm_start_summary(ws)["matched_items"] > 100
    adapters = adapters_summary(ws)
    assert adapters["warm_start"]["staged"] and "skipped" not in adapters["warm_start"], adapters["warm_start"]
    assert adapters["warm_start"]["teacher_changed"]  # SASRec was retrained (warm) under the same adapters
    assert adapters["initial_valid_ndcg@10"] is not None  # the staged adapters' score at step 0 starts the curve

    # Again, nothing changed: the checkpoints to stage are the ones just trained, so the folders stay as
    # dvc.lock records them and DVC re-runs nothing (else every run would retrain the models from themselves).
    info = stage_warm_start(ws, stages, "previous", log=lambda *_: None)["stages"]
    assert all(i["unchanged"] and i["source"] is None for i in info.values()) and set(info) == {"pretrain_sasrec",
                                                                                                "distill"}
    assert re.findall(r"Running stage '(\w+)'", repro(ws, *TRAINING).stdout) == []
    assert staged_hashes(ws) == warm

    # `none`: the folders are emptied (their READMEs stay), so both stages re-run from scratch.
    stage_warm_start(ws, stages, "none", log=lambda *_: None)
    for folder in (STAGED, STAGED_ADAPTERS):
        assert sorted(p.name for p in (ws / folder).iterdir()) == [WARM_START_MARKER]
    assert re.findall(r"Running stage '(\w+)'", repro(ws, *TRAINING).stdout) == list(TRAINING)
    assert staged_hashes(ws) == empty and warm_start_summary(ws) is None and adapters_summary(ws)["warm_start"] is None


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
    assert stage_warm_start(ws, stages, "previous", log=lambda *_: None)["stages"]["pretrain_sasrec"]["source"]
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
