"""The DAG on real engines: the CeleryExecutor with a `gpu` queue, against the LocalExecutor, on this machine.

One repository (a bare git remote, branches `local` and `pipeline`), one DVC remote (a folder), one batch:
1. the CeleryExecutor: Redis, a scheduler, DAG processor and API server, and two Celery workers, `default` and
   `gpu`, each in its own checkout with its own Airflow and BentoML homes: they share no folder, stages pass
   data through the DVC remote and dvc.lock through the `pipeline` branch. A batch lands on the default
   worker. The `gpu` worker is killed with SIGKILL (with every process below it) while `distill` trains; the
   scheduler fails the task for its lost heartbeat, the restarted worker takes the retry, and distill resumes
   from its checkpoint;
2. the LocalExecutor: a scheduler runs every task in one checkout (exchange off), on the store of accepted
   batches the Celery run landed (the landing zone records each batch's arrival time, in its id and
   batch.json, so landing the same file again would be a different input).

Both runs promote a model, and the `pipeline` branch's dvc.lock matches the LocalExecutor's, stage for stage:
same data, same SASRec, same adapters, same metrics, the kill notwithstanding.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from components.orchestration.stack import AirflowStack
from components.stages import ingest
from tests.conftest import make_workspace, venv_env
from tests.dags.test_dag_e2e import DVC_STAGES, new_batch, small_params


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout


def _params(llm_dir: Path) -> dict:
    p = small_params(llm_dir)
    # Long enough to be killed mid-way with a checkpoint behind it; kv_cache_mb 0 so a resumed run computes every
    # step exactly as an uninterrupted one (tests/llm/test_distill_resume.py).
    # A checkpoint every 8 steps; the worker is killed as soon as the first is written, so ~70 of the 80 steps are
    # still ahead (3 s of training at 25 steps/s, 10 s at the 7 steps/s of a CPU shared with the other stack).
    p["distill"].update(max_steps=80, eval_every=0.02, valid_users=32, patience=1000, kv_cache_mb=0)
    p["orchestration"] = {"retries": 1, "retry_delay_seconds": 0, "schedule": None, "trigger_on_batch": False,
                          "landing": {"settle_seconds": 0}}
    return p


def _state_step(checkout: Path) -> int:
    steps = [json.loads(p.read_text())["progress"]["step"]
             for p in (checkout / "models" / ".resume" / "distill").glob("*/state.json")]
    return max(steps, default=0)


def _drop_batch(checkout: Path, batch, tmp: Path) -> None:
    src = tmp / "week_1.csv"
    batch.to_csv(src, index=False)
    subprocess.run([sys.executable, "-m", "components.data.landing", "drop", str(src)], cwd=checkout, env=venv_env(),
                   check=True, capture_output=True)


def _processes_in(folder: Path) -> list[str]:
    """Command lines of the live processes whose working directory is inside `folder`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cwd = Path(proc / "cwd").readlink()
            if cwd == folder or folder in cwd.parents:
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ValueError):
            continue
    return found


@contextlib.contextmanager
def running(*stacks: AirflowStack):
    """The stacks started at once and stopped at once (each stopped however the block ends, as `with a, b:`
    would): their processes import Airflow, parse the DAG and shut down side by side, each stack's waits
    overlapping the other's work (starting both: 38 s one after the other, 23 s at once, on 2 shared cores)."""
    def each(method) -> None:
        with ThreadPoolExecutor(len(stacks)) as pool:
            for done in [pool.submit(method, stack) for stack in stacks]:
                done.result()

    with contextlib.ExitStack() as cleanup:
        cleanup.callback(each, AirflowStack.stop)
        each(AirflowStack.start)
        yield stacks


def _stages(lock_text: str) -> dict:
    return yaml.safe_load(lock_text)["stages"]


@pytest.mark.slow
def test_celery_workers_that_share_no_folder_match_the_local_executor(tmp_path, tiny_llm_dir, airflow_home):
    src = make_workspace(tmp_path / "src", _params(tiny_llm_dir))
    remote = tmp_path / "dvc-remote"
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "storage", str(remote)], cwd=src, check=True,
                   env=venv_env(), capture_output=True)
    _git(src, "add", ".dvc/config")
    _git(src, "commit", "-qm", "DVC remote")
    _git(src, "branch", "local")
    params = yaml.safe_load((src / "params.yaml").read_text())
    params["orchestration"]["exchange"] = {"dvc_remote": "storage", "git_remote": "origin", "git_branch": "pipeline"}
    # No folder is shared with serving either: a promotion is exported (a bucket in production), and the serving
    # host imports it.
    exports = tmp_path / "model-exports"
    params["orchestration"]["serving_reload_command"] = \
        f"sh -c 'mkdir -p {exports} && bentoml models export \"$LLMSREC_PROMOTED_TAG\" {exports}/'"
    (src / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(src, "checkout", "-qb", "pipeline")
    _git(src, "commit", "-qam", "exchange through the DVC remote and this branch")
    origin = tmp_path / "origin.git"
    _git(tmp_path, "clone", "--quiet", "--bare", str(src), str(origin))
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    batch = new_batch_for(src, tiny_llm_dir, tmp_path)

    # 1. The CeleryExecutor, two workers in their own checkouts; the gpu worker dies during distill.
    # 2. The LocalExecutor, one checkout, on the same store of accepted batches: a batch's arrival time is part
    # of what the landing zone records (its id, batch.json), so landing the file again would be another input.
    # It starts as soon as the Celery run has landed the batch: the two runs overlap, which halves the wait.
    celery = AirflowStack(tmp_path / "celery", str(origin), "pipeline", queues=("default", "gpu"), env=threads,
                          heartbeat_timeout=15, db_template=airflow_home / "airflow.db")
    local = AirflowStack(tmp_path / "local", str(origin), "local", executor="LocalExecutor",
                         env={**threads, "BENTOML_HOME": str(tmp_path / "local-bentoml")},
                         db_template=airflow_home / "airflow.db")
    with running(celery, local):
        default, gpu = celery.workers["default"], celery.workers["gpu"]
        _drop_batch(default, batch, tmp_path)
        run = celery.trigger()
        celery.wait_for(lambda: celery.task_instances(run)["ingest_batches"]["state"] == "success", 300,
                        "the Celery run to land the batch")
        shutil.copytree(default / "data" / "batches", local.control / "data" / "batches")
        local_run = local.trigger()
        celery.wait_for(lambda: _state_step(gpu) >= 8, 600, "distill to save a checkpoint on the gpu worker", every=0.2)
        killed_at = _state_step(gpu)
        celery.kill("worker-gpu")
        assert not _processes_in(gpu), "the gpu worker's task processes outlived it"
        celery.wait_for(lambda: celery.task_instances(run)["distill"]["state"] in ("up_for_retry", "queued", "failed"),
                        180, "the scheduler to notice the lost gpu worker")
        celery.start_worker("gpu")
        assert celery.wait_run(run, timeout=900) == "success", celery.task_instances(run)
        tis = celery.task_instances(run)
        summary = json.loads((default / "reports" / "runs" / "latest.json").read_text())
        assert local.wait_run(local_run, timeout=900) == "success", local.task_instances(local_run)
    # Everything the two stacks started is gone: Redis, Airflow's processes, workers, task runners, stages.
    assert not _processes_in(tmp_path / "celery") and not _processes_in(tmp_path / "local")
    local_lock = (local.control / "dvc.lock").read_text()
    local_summary = json.loads((local.control / "reports" / "runs" / "latest.json").read_text())
    assert local_summary["outcome"] in ("promoted", "provisional")
    assert local_summary["landing"]["accepted"] == [] and len(summary["landing"]["accepted"]) == 1

    # The run succeeds and a model is promoted, from the default worker's BentoML store.
    assert summary["outcome"] in ("promoted", "provisional"), summary
    assert summary["production_after"] and not summary["production_before"]
    assert (default.parent / "default.bentoml" / "registry" / "llmsrec.json").is_file()
    assert not (gpu.parent / "gpu.bentoml" / "registry").exists()  # the gpu worker never touched a registry
    # distill ran on the gpu worker, every other task on the default one, as the task instances record.
    assert tis["distill"]["queue"] == "gpu" and tis["distill"]["hostname"].startswith("gpu@"), tis["distill"]
    assert tis["distill"]["try_number"] == 2  # the killed attempt, then the retry
    others = {t: ti for t, ti in tis.items() if t != "distill" and ti["state"] == "success"}
    assert set(DVC_STAGES) - {"distill"} <= set(others)
    assert all(ti["queue"] == "default" and ti["hostname"].startswith("default@") for ti in others.values()), others
    # The retry resumed from the checkpoint the killed attempt left.
    record = json.loads((gpu / "reports" / "timings" / "distill.json").read_text())
    assert record["resumed_from_step"] >= killed_at > 0, (record["resumed_from_step"], killed_at)
    # The workers shared no folder: the gpu worker pulled distill's inputs and pushed its output.
    assert (gpu / "models" / "sasrec" / "config.json").is_file() and not (gpu / "data" / "batches").exists()
    assert not (default / "models" / ".resume" / "distill").exists()
    # dvc.lock on the branch matches the LocalExecutor's, stage for stage (and so do the metrics it pins). One
    # field differs by design: package's report names the version its BentoML store gave the model, and each
    # store draws its own version id; the same stage read the same inputs and wrote the same decision.
    lock, ref = _stages(_git(origin, "show", "pipeline:dvc.lock")), _stages(local_lock)
    assert set(lock) == set(ref) == set(DVC_STAGES) | {"ingest_batches"}
    for stage in set(lock) - {"package", "report"}:
        assert lock[stage] == ref[stage], stage
    # The run report differs in its "trained at commit" lines only, by design (components/stages/report.py): a
    # training stage's run record stays on the worker that ran it, and each checkout has its own commits. So
    # its hash differs, where report writes it and where package reads it; everything else is the same.
    def but_the_page(entry: dict) -> dict:
        return {**{k: v for k, v in entry.items() if k != "outs"},
                "deps": [d for d in entry["deps"] if d["path"] != "reports/run_report.html"]}

    for stage in ("package", "report"):
        assert but_the_page(lock[stage]) == but_the_page(ref[stage]), stage
    def commitless(page: Path) -> str:
        return re.sub(r"(trained at commit \(\w+\)</td><td><code>)[^<]*", r"\1", page.read_text())

    assert commitless(default / "reports" / "run_report.html") == commitless(local.control / "reports" / "run_report.html")
    versions = ("tag", "production")
    ours = json.loads(_git(origin, "show", "pipeline:reports/package.json"))
    theirs = json.loads((local.control / "reports" / "package.json").read_text())
    assert {k: v for k, v in ours.items() if k not in versions} == {k: v for k, v in theirs.items() if k not in versions}
    assert ours["tag"] == summary["production_after"] and theirs["tag"] == local_summary["production_after"]
    assert json.loads(_git(origin, "show", "pipeline:reports/metrics.json")) == \
        json.loads((local.control / "reports" / "metrics.json").read_text())
    log = _git(origin, "log", "--format=%s", "pipeline")
    assert "distill: " in log and "(try 2)" in log  # the retry published distill, not the killed attempt

    # Serving, on a host of its own, picks the promotion up from the export: import, promote, verify.
    tag = summary["production_after"]
    (exported,) = exports.glob("*.bentomodel")
    serving = {**venv_env(), "BENTOML_HOME": str(tmp_path / "serving.bentoml")}
    for argv in (["bentoml", "models", "import", str(exported)],
                 [sys.executable, "-m", "components.serving.registry", "promote", tag],
                 [sys.executable, "-m", "components.serving.registry", "verify", tag]):
        done = subprocess.run(argv, env=serving, capture_output=True, text=True, cwd=default)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "every file as packaged" in done.stdout


def new_batch_for(src: Path, llm_dir: Path, tmp: Path):
    """The e2e test's batch (30 new users, 3 new items), built against the default data's item ids: what the
    ingest stage writes from `src`'s params (its store of batches is empty), run here, in this process, rather
    than through `dvc repro` in a copy (two stage processes and DVC's, on a CPU the stacks are about to share)."""
    probe = tmp / "probe"
    ingest.main(["--params", str(src / "params.yaml"), "--out", str(probe / "data" / "ingested"),
                 "--cache", str(probe / "downloads")])
    batch = new_batch(probe)
    shutil.rmtree(probe)
    return batch


if __name__ == "__main__":  # pragma: no cover - for running the stack by hand while debugging
    sys.exit(pytest.main([__file__, "-x", "-q"]))
