"""Stages on workers that share no folder: a DVC remote for the data, a git branch for dvc.lock.

Each worker (a Celery worker on its own machine, a Kubernetes pod) has its own git checkout of the
repository. A stage's task, in that checkout and holding the repository lock (runner.repo_lock):

1. fetches `exchange.git_branch` from `exchange.git_remote` and checks it out: dvc.lock, params, code and
   the `cache: false` metrics and plot data as the last stage left them;
2. `dvc pull --allow-missing` the outputs of the stages it reads from, and its own (with its outputs in
   place, a stage whose inputs did not change is a no-op for `dvc repro`, as on one machine);
3. runs `dvc repro -s STAGE` (runner.repro);
4. `dvc push`es its outputs to `exchange.dvc_remote`, commits dvc.lock and its `cache: false` outputs, and
   pushes the commit to the branch.

This is DVC's own model of a team sharing a pipeline (git carries the lock file and what is not cached,
the remote carries the data), run by the tasks. Here the remote is a local folder; for users it is S3,
GCS, Azure or SSH (`dvc remote add`), with the worker's credentials. When git refuses the push (the
branch moved: someone ran a stage meanwhile), the task fails and its retry starts over from step 1.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from components.config import ExchangeParams
from components.errors import MAX_MESSAGE, clip
from components.orchestration.graph import Stage
from components.orchestration.runner import StageFailed, StageInputError, repo_lock, repro, run_module

#: the DVC remote the KubernetesExecutor's pod was started for (components/orchestration/kubernetes.py)
DVC_REMOTE_ENV = "LLMSREC_DVC_REMOTE"
#: who commits a stage's dvc.lock when the worker's git has no identity of its own
COMMITTER = ("llm_srec_retraining", "llm-srec-pipeline@localhost")


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # No prompt can be answered on a worker: a remote that asks for credentials fails at once instead.
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise StageFailed(f"`git {' '.join(args)}` failed (exit {proc.returncode}): "
                          f"{clip((proc.stderr or proc.stdout).strip(), MAX_MESSAGE)}")
    return proc


def sync(repo: Path, cfg: ExchangeParams, log=print) -> str:
    """Check out the tip of the exchange branch in `repo`; returns its commit. Local edits to tracked files
    are discarded (the branch is the truth); ignored files (DVC's outputs, the resume state) stay.

    Raises StageInputError when the remote or the branch does not exist (retrying cannot help), StageFailed
    when git fails otherwise (e.g. the remote is unreachable: a retry may succeed)."""
    proc = _git(repo, "fetch", "--quiet", cfg.git_remote, cfg.git_branch, check=False)
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip()
        if "couldn't find remote ref" in message or "does not appear to be a git repository" in message:
            raise StageInputError(
                f"ERROR [exchange] {repo}: git remote {cfg.git_remote!r} has no branch {cfg.git_branch!r} "
                f"({clip(message, 300)}). Fix: push it once from a checkout of the pipeline "
                f"(`git push {cfg.git_remote} HEAD:{cfg.git_branch}`), or set orchestration.exchange")
        raise StageFailed(f"`git fetch {cfg.git_remote} {cfg.git_branch}` failed: {clip(message, MAX_MESSAGE)}")
    _git(repo, "checkout", "--quiet", "--force", "-B", cfg.git_branch, "FETCH_HEAD")
    head = _git(repo, "rev-parse", "HEAD").stdout.strip()
    log(f"exchange: {repo} at {cfg.git_remote}/{cfg.git_branch} {head[:12]}")
    return head


def pull(repo: Path, stage: Stage, cfg: ExchangeParams, log=print) -> None:
    """`dvc pull` what `stage` reads from upstream stages, and its own outputs, from the DVC remote.

    `--allow-missing`: on a first run nothing is in the remote yet for the stage itself, and a stage whose
    inputs changed re-creates its outputs anyway. `--force`: what a killed attempt left in the outputs (never
    recorded in dvc.lock) is replaced by what the branch records, as `dvc repro` would delete it anyway."""
    # In-process: the task has loaded DVC already (graph.pipeline_stages); `dvc remote list` costs a process.
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        remotes = set(dvc.config["remote"])  # the merged config, as `dvc remote list` shows it
    if cfg.dvc_remote not in remotes:
        raise StageInputError(
            f"ERROR [exchange] {repo}: orchestration.exchange.dvc_remote is {cfg.dvc_remote!r}, but .dvc/config "
            f"has no such remote. Fix: `dvc remote add {cfg.dvc_remote} URL` (S3, GCS, a folder) and commit "
            f".dvc/config to {cfg.git_remote}/{cfg.git_branch}")
    targets = [*stage.upstream, stage.address]
    run_module(repo, ["dvc", "pull", "--allow-missing", "--force", "-r", cfg.dvc_remote, *targets], log)


def publish(repo: Path, stage: Stage, cfg: ExchangeParams, message: str, log=print) -> str | None:
    """Push `stage`'s outputs to the DVC remote and its dvc.lock entry (with its `cache: false` outputs)
    to the branch. Returns the new commit, or None when the stage changed nothing (DVC skipped it)."""
    run_module(repo, ["dvc", "push", "-r", cfg.dvc_remote, stage.address], log)
    _git(repo, "add", "--", "dvc.lock")
    # git ignores reports/ files by default here; these are outputs DVC leaves to git on purpose.
    present = [p for p in stage.uncached if (repo / p).exists()]
    if present:
        _git(repo, "add", "--force", "--", *present)
    # DVC lists the outputs it caches in .gitignore files next to them: keep those in step too.
    _git(repo, "add", "--update", "--", ":(glob)**/.gitignore")
    if _git(repo, "diff", "--cached", "--quiet", check=False).returncode == 0:
        log(f"exchange: {stage.address} changed nothing; {cfg.git_branch} stays")
        return None
    identity = [] if _git(repo, "config", "user.email", check=False).stdout.strip() else \
        ["-c", f"user.name={COMMITTER[0]}", "-c", f"user.email={COMMITTER[1]}"]
    _git(repo, *identity, "commit", "--quiet", "-m", message)
    proc = _git(repo, "push", "--quiet", cfg.git_remote, f"HEAD:{cfg.git_branch}", check=False)
    if proc.returncode != 0:
        raise StageFailed(f"git refused the push of {stage.address}'s dvc.lock to {cfg.git_remote}/{cfg.git_branch} "
                          f"(did another run move the branch?): {clip(proc.stderr.strip(), 600)}. The retry "
                          "starts again from the branch's tip")
    head = _git(repo, "rev-parse", "HEAD").stdout.strip()
    log(f"exchange: {stage.address} -> {cfg.dvc_remote} (data), {cfg.git_remote}/{cfg.git_branch} {head[:12]} (dvc.lock)")
    return head


def run_exchanged(repo: Path, stage: Stage, cfg: ExchangeParams, message: str, before=None, log=print) -> dict:
    """Sync, pull, `dvc repro -s`, publish, all under the repository lock. `before(repo)`, when given, runs
    after the pull and before the stage (the warm start stages its checkpoint there). Returns runner.repro's
    record with `commit` (the branch's commit after this stage) and `checkout` (this worker's folder).
    Raises StageInputError or StageFailed as runner.run_stage does."""
    pod_remote = os.environ.get(DVC_REMOTE_ENV)
    if pod_remote and pod_remote != cfg.dvc_remote:
        # The scheduler named the remote in the pod (components/orchestration/kubernetes.py) from its params.yaml;
        # this worker parsed another: the image and the scheduler run different commits.
        raise StageInputError(
            f"ERROR [exchange] this pod was started for DVC remote {pod_remote!r} ({DVC_REMOTE_ENV}), but {repo}/"
            f"params.yaml says orchestration.exchange.dvc_remote: {cfg.dvc_remote!r}. Fix: deploy the scheduler's "
            "commit in the image (orchestration.image)")
    with repo_lock(repo):
        sync(repo, cfg, log)
        pull(repo, stage, cfg, log)
        extra = before(repo) if before is not None else None
        record = repro(repo, stage.address, log)
        commit = publish(repo, stage, cfg, message, log)
    return {**record, "commit": commit or _git(repo, "rev-parse", "HEAD").stdout.strip(), "checkout": str(repo),
            **({"before": extra} if extra is not None else {})}
