"""The data version holds everything a model was trained on, and reruns cost nothing: real DVC, real clones.

- Accepted batches are a DVC output (the `ingest_batches` stage's raw store): `dvc push` sends them to a
  real local remote and `dvc pull` brings them back into a real `git clone`; a clone that has not pulled
  them refuses to land into an empty store (which would train without them).
- A batch landing while `ingest` runs: through `dvc repro -s ingest_batches` DVC refuses to write the
  store `ingest` is reading; through the landing CLI by hand, `ingest` fails and records nothing. Either
  way, when `dvc status` says `ingest` is up to date, `ingest` read exactly the batches dvc.lock records.
- Every stage re-run with `-f` on unchanged inputs leaves dvc.lock as it was and nothing downstream
  stale; no DVC output of any stage holds a duration, the host, threads, the device or a resume point.

The data tests start from the same clone, ingested (and, for most, with one batch accepted): it is made
once per module and each test works on its own copy, git repository and DVC cache included.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from tests.conftest import copy_workspace, make_workspace, venv_env
from tests.data.conftest import SMALL_DATA

DVC = [sys.executable, "-m", "dvc"]
DATA_STAGES = ["ingest_batches", "ingest", "validate", "prepare"]
#: keys that would make an output differ between two runs on the same inputs (components/timings.py)
RUN_ONLY_KEYS = {"seconds", "minutes", "train_seconds", "seconds_per_epoch", "seconds_per_step",
                 "examples_per_second", "item_table_seconds", "item_table_items_per_second", "threads", "device",
                 "host", "cpus", "finished_at", "resumed_after_epoch", "resumed_from_step", "reused"}


def dvc(ws: Path, *args: str, env: dict | None = None, check: bool = True, timeout: float = 900):
    run = subprocess.run(DVC + list(args), cwd=ws, env=env or venv_env(), capture_output=True, text=True,
                         timeout=timeout)
    if check:
        assert run.returncode == 0, f"dvc {' '.join(args)}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run


def status(ws: Path, target: str | None = None, env: dict | None = None) -> dict:
    """`dvc status --json [TARGET]` (TARGET and what it depends on): stage -> what changed. Up to date, it
    lists only the stage that always runs."""
    return json.loads(dvc(ws, "status", "--json", *(["--with-deps", target] if target else []), env=env).stdout or "{}")


def git(ws: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=ws, check=True,
                   capture_output=True)


def drop_batch(ws: Path, name: str, users: range, per_user: int = 8, into: Path | None = None) -> Path:
    """A batch of new users on items `ws` knows, put into the landing zone of `into` (default `ws`) with the
    producers' CLI. Returns the producer's file."""
    items = pd.read_parquet(ws / "data" / "ingested" / "items.parquet")["item_id"].astype(str).tolist()
    rows = [{"user_id": f"{name}_user_{u}", "item_id": items[(u * 7 + k) % len(items)],
             "timestamp": 1_700_000_000 + u * 1000 + k * 60} for u in users for k in range(per_user)]
    src = ws.parent / name
    pd.DataFrame(rows).to_csv(src, index=False)
    subprocess.run([sys.executable, "-m", "components.data.landing", "drop", str(src)], cwd=into or ws,
                   env=venv_env(), check=True, capture_output=True)
    return src


def store_batches(ws: Path) -> set[str]:
    store = ws / "data" / "batches"
    return {p.name for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")} if store.is_dir() else set()


def ingested_batches(ws: Path) -> set[str]:
    """The batches the last `ingest` read, from the rows' lineage (the batch file's folder)."""
    sources = pd.read_parquet(ws / "data" / "ingested" / "interactions.parquet", columns=["_source"])["_source"]
    return {Path(s).parent.name for s in sources.unique() if "data/batches/" in s}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Path:
    """A fresh clone on the small synthetic data after `dvc repro ingest`: no batch yet. Tests copy it."""
    ws = make_workspace(tmp_path_factory.mktemp("ingested") / "ws", SMALL_DATA)
    dvc(ws, "repro", "ingest")
    return ws


@pytest.fixture(scope="module")
def one_batch(ingested, tmp_path_factory) -> SimpleNamespace:
    """`ingested` after one batch (`week_1.csv`, 20 new users) landed and `dvc repro ingest` read it:
    `ws` (tests copy it) and `src`, the producer's file."""
    ws = copy_workspace(ingested, tmp_path_factory.mktemp("one_batch") / "ws")
    src = drop_batch(ws, "week_1.csv", range(20))
    dvc(ws, "repro", "ingest")
    return SimpleNamespace(ws=ws, src=src)


def assert_lock_is_what_ingest_read(ws: Path) -> None:
    """The kind: when DVC says `ingest` is up to date, it read every batch of the store dvc.lock records."""
    if "ingest" not in status(ws, "ingest"):
        assert ingested_batches(ws) == store_batches(ws), "dvc.lock records batches whose rows ingest never read"


# --- 7: the accepted batches are part of the data version ---------------------------------------------


@pytest.mark.slow
def test_accepted_batches_travel_with_dvc_push_and_come_back_with_dvc_pull(one_batch, tmp_path):
    ws, src = copy_workspace(one_batch.ws, tmp_path / "ws"), one_batch.src
    (batch,) = store_batches(ws)
    assert (ws / "data" / "batches" / batch / "week_1.csv").read_bytes() == src.read_bytes()
    assert ingested_batches(ws) == {batch}

    remote = tmp_path / "remote"
    dvc(ws, "remote", "add", "-d", "store", str(remote))
    git(ws, "add", "dvc.lock", ".dvc/config")
    git(ws, "commit", "-qm", "data version with one batch")
    dvc(ws, "push")

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ws), str(clone)], check=True, capture_output=True)
    assert not store_batches(clone)  # git never held the batches
    dvc(clone, "pull", "--with-deps", "ingest")  # the stages this workspace ran
    assert (clone / "data" / "batches" / batch / "week_1.csv").read_bytes() == src.read_bytes()
    assert (clone / "data" / "batches" / batch / "batch.json").read_bytes() == \
        (ws / "data" / "batches" / batch / "batch.json").read_bytes()
    assert status(clone, "ingest") == {"ingest_batches": ["always changed"]}  # the data version, whole
    assert ingested_batches(clone) == {batch}

    # A clone that has not pulled: landing into its empty store would record a store without the batch,
    # and the next ingest would train without it. The stage refuses, says how to get them, lands nothing.
    bare = tmp_path / "bare"
    subprocess.run(["git", "clone", "-q", str(ws), str(bare)], check=True, capture_output=True)
    drop_batch(ws, "week_2.csv", range(100, 110), into=bare)
    refused = dvc(bare, "repro", "ingest", check=False)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "ERROR [ingest_batches]" in said and "dvc pull data/batches" in said, said
    assert not store_batches(bare) and (bare / "data" / "incoming" / "week_2.csv").is_file()
    assert not (bare / "data" / "ingested").exists()


@pytest.mark.slow
def test_retracting_the_only_batch_retrains_without_it_and_is_not_taken_for_a_lost_store(one_batch, tmp_path):
    """An operator empties the store on purpose (`retract` of its only batch): the next `dvc repro` trains
    on the base data alone, where a store missing its batches without a retraction is still refused."""
    ws = copy_workspace(one_batch.ws, tmp_path / "ws")
    (batch,) = store_batches(ws)
    subprocess.run([sys.executable, "-m", "components.data.landing", "retract", batch, "--reason", "wrong export"],
                   cwd=ws, env=venv_env(), check=True, capture_output=True)
    assert not store_batches(ws)
    dvc(ws, "repro", "ingest")
    assert not ingested_batches(ws)
    assert (ws / "data" / "landing" / "retracted" / batch / "week_1.csv").is_file()  # kept, not lost


# --- 8: ingest reads a snapshot, and dvc.lock records what it read --------------------------------------


def pause_ingest_after_listing(proc: subprocess.Popen, ws: Path):
    """SIGSTOP the `ingest` command that `proc` (a `dvc repro`) runs, once it has listed the store: it is
    reading a batch file, or writing its output. Returns the paused process (psutil)."""
    import psutil

    store, out = (ws / "data" / "batches").resolve(), ws / "data" / "ingested"
    parent = psutil.Process(proc.pid)
    deadline = time.time() + 300
    child = None
    while child is None and time.time() < deadline and proc.poll() is None:
        for p in parent.children(recursive=True):
            try:
                if "components.stages.ingest" in p.cmdline():  # DVC removed the output before starting it
                    child = p
            except psutil.NoSuchProcess:
                continue
    try:
        while child is not None and time.time() < deadline:
            if out.is_dir() or any(Path(f.path).is_relative_to(store) for f in child.open_files()):
                child.send_signal(signal.SIGSTOP)
                return child
    except psutil.NoSuchProcess:
        pass
    out_text = proc.communicate()[0] if proc.poll() is not None else ""
    raise AssertionError(f"ingest ended before it could be paused mid-run: {out_text[-2000:]}")


def start_ingest(ws: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(DVC + ["repro", *flags, "-s", "ingest"], cwd=ws, env=venv_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_batch_landing_while_ingest_runs_is_never_recorded_unread(ingested, tmp_path):
    ws = copy_workspace(ingested, tmp_path / "ws")
    # A large first batch, so that ingest spends long enough reading the store to be caught doing it.
    drop_batch(ws, "big.csv", range(2000), per_user=40)
    dvc(ws, "repro", "ingest")
    first = store_batches(ws)
    assert len(first) == 1 and ingested_batches(ws) == first

    # Through DVC, as the DAG and `dvc repro` land batches: DVC will not let the landing write the store
    # that the running ingest reads. The file waits in the landing zone, and nothing is lost.
    drop_batch(ws, "late.csv", range(5000, 5010))
    proc = start_ingest(ws, "-f")
    paused = pause_ingest_after_listing(proc, ws)
    try:
        landing = dvc(ws, "repro", "-s", "ingest_batches", check=False, timeout=300)
    finally:
        paused.send_signal(signal.SIGCONT)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    assert landing.returncode != 0 and "busy" in landing.stdout + landing.stderr, landing.stdout + landing.stderr
    assert store_batches(ws) == first and (ws / "data" / "incoming" / "late.csv").is_file()
    assert_lock_is_what_ingest_read(ws)

    # By hand, around DVC (the landing CLI while ingest runs): ingest sees the store change under it and
    # fails, so dvc.lock never records the new batch as read.
    proc = start_ingest(ws, "-f")
    paused = pause_ingest_after_listing(proc, ws)
    try:
        subprocess.run([sys.executable, "-m", "components.data.landing", "ingest"], cwd=ws, env=venv_env(),
                       check=True, capture_output=True, timeout=300)
    finally:
        paused.send_signal(signal.SIGCONT)
    out = proc.communicate(timeout=600)[0]
    assert len(store_batches(ws)) == 2  # the late batch is in the store now
    assert_lock_is_what_ingest_read(ws)
    assert proc.returncode != 0 and "changed while ingest read it" in out, out[-3000:]
    assert "ingest" in status(ws, "ingest")  # so the next `dvc repro` reads it

    dvc(ws, "repro", "ingest")
    assert ingested_batches(ws) == store_batches(ws)
    assert status(ws, "ingest") == {"ingest_batches": ["always changed"]}


# --- 10: DVC outputs are a function of their inputs alone ---------------------------------------------


def dvc_output_jsons(ws: Path) -> list[Path]:
    """Every JSON file DVC tracks as an output, metric or plot of a stage that has run (inside folders too)."""
    spec = yaml.safe_load((ws / "dvc.yaml").read_text())["stages"]
    paths = []
    for stage in spec.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                p = ws / (next(iter(entry)) if isinstance(entry, dict) else entry)
                paths += sorted(p.rglob("*.json")) if p.is_dir() else [p] if p.suffix == ".json" and p.is_file() else []
    return paths


def run_only_keys(obj) -> set[str]:
    """Keys of RUN_ONLY_KEYS anywhere in a JSON value."""
    if isinstance(obj, dict):
        return (set(obj) & RUN_ONLY_KEYS).union(*(run_only_keys(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(run_only_keys(v) for v in obj))
    return set()


@pytest.mark.slow
def test_forcing_any_data_stage_again_leaves_everything_downstream_up_to_date(one_batch, tmp_path):
    ws = copy_workspace(one_batch.ws, tmp_path / "ws")
    dvc(ws, "repro", "prepare")
    lock = (ws / "dvc.lock").read_text()
    for stage in DATA_STAGES:  # what the README advises after editing files under data.path in place
        dvc(ws, "repro", "-f", "-s", stage)
        assert status(ws, "prepare") == {"ingest_batches": ["always changed"]}, f"forcing {stage} made stages stale"
        assert (ws / "dvc.lock").read_text() == lock, f"forcing {stage} changed what dvc.lock records"
        record = json.loads((ws / "reports" / "timings" / f"{stage}.json").read_text())
        assert record["stage"] == stage and record["seconds"] >= 0 and record["host"]
    outputs = dvc_output_jsons(ws)
    found = {str(p.relative_to(ws)): sorted(keys) for p in outputs if (keys := run_only_keys(json.loads(p.read_text())))}
    assert outputs and not found, f"DVC outputs hold run-only facts: {found}"
    landing = json.loads((ws / "reports" / "timings" / "ingest_batches.json").read_text())["landing"]
    assert landing["accepted"] == []  # the last run found nothing new


@pytest.mark.slow
def test_no_stage_output_holds_wall_clock_host_or_run_history(reproduced, tmp_path):
    """The whole pipeline on a tiny SASRec and the real LLM (tests/data/conftest.py `reproduced`); then the
    training and scoring stages are forced again, on a copy, and nothing after them goes stale."""
    ws = copy_workspace(reproduced.ws, tmp_path / "ws")
    env = reproduced.env  # its BentoML store, one OpenMP thread
    outputs = dvc_output_jsons(ws)
    assert {p.name for p in outputs} >= {"ingest.json", "meta.json", "training.json", "validation.json",
                                          "sasrec_train.json", "distill_train.json", "sasrec_curve.json",
                                          "distill_curve.json", "metrics.json", "gate.json", "package.json"}
    found = {str(p.relative_to(ws)): sorted(keys) for p in outputs if (keys := run_only_keys(json.loads(p.read_text())))}
    assert not found, f"DVC outputs hold run-only facts: {found}"
    # ...which are in the run records instead, where the benchmarks read them.
    sasrec = json.loads((ws / "reports" / "timings" / "pretrain_sasrec.json").read_text())
    assert sasrec["seconds_per_epoch"] > 0 and sasrec["threads"] == 1 and len(sasrec["rounds"]) == 2
    distill = json.loads((ws / "reports" / "timings" / "distill.json").read_text())
    assert distill["seconds_per_step"] > 0 and distill["device"] == "cpu"
    assert json.loads((ws / "reports" / "timings" / "package.json").read_text())["reused"] is False

    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    for stage in ("pretrain_sasrec", "distill", "evaluate"):
        dvc(ws, "repro", "-f", "-s", stage, env=env)
        assert status(ws, env=env) == {"ingest_batches": ["always changed"]}, f"forcing {stage} made stages stale"
        assert yaml.safe_load((ws / "dvc.lock").read_text())["stages"][stage] == lock[stage]
