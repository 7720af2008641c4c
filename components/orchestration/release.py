"""The release side of a DAG run: warm start, the gate decision, rejection, serving reload, the summary.

The champion is never touched here. Promotion happens only inside the `package` stage, as its last
step; a run that fails or is rejected anywhere leaves the registry's production pointer as it was.
"""

from __future__ import annotations

import filecmp
import importlib
import os
import re
import shlex
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.errors import MAX_MESSAGE, ConfigError, clip
from components.io import read_json, write_json
from components.orchestration.graph import Stage, option_of
from components.orchestration.runner import dvc_write_lock, repo_lock
from components.serving import registry
from components.serving.decision import read_decision
from components.serving.integrity import LLMSREC_DIR, sasrec_dir

WARM_START_FLAG = "--warm-start-staged"
#: the file that keeps the staged warm-start folder in every clone (see stage_warm_start)
WARM_START_MARKER = "README.md"


def production_tag() -> str | None:
    """The registry's production tag, None when there is none yet."""
    return registry.production_tag()


#: where each model's checkpoint sits inside a production package, by the name of the folder it is staged in
#: (`models/warm_start/<model>`, the checkpoint's own `model` name)
PACKAGE_PARTS = {"sasrec": sasrec_dir, "llmsrec": lambda root: root / LLMSREC_DIR}


def champion_sasrec(tag: str) -> Path | None:
    """The SASRec checkpoint inside the production package."""
    return champion_checkpoint(tag, "sasrec")


def champion_checkpoint(tag: str, model: str) -> Path | None:
    """The checkpoint of `model` (a `PACKAGE_PARTS` name) inside the package `tag`; None when it has none."""
    part = PACKAGE_PARTS.get(model)
    path = part(Path(registry.get_model(tag).path)) if part is not None else None
    return path if path is not None and (path / "config.json").is_file() else None


def warm_start_stages(stages: list[Stage]) -> list[Stage]:
    """The stages that train from a staged checkpoint (their command has `--warm-start-staged`), in dvc.yaml's
    order: upstream first (pretrain_sasrec, then distill)."""
    return [s for s in stages if option_of(s, WARM_START_FLAG)]


def stage_warm_start(repo: Path, stages: list[Stage], mode: str, log=print, only: str | None = None) -> dict[str, Any]:
    """Stage, for every stage that trains from a staged checkpoint (`warm_start_stages`), or only the stage
    whose address is `only`, the checkpoint it should continue from. Returns `{"mode", "stages": {task id:
    what `stage_one` did}}`.

    In dvc.yaml's order, so a trainer downstream of another (distill after pretrain_sasrec) sees the upstream
    one's staged folder already changed when it asks DVC whether anything it reads changed."""
    trainers = [s for s in warm_start_stages(stages) if only is None or s.address == only]
    if not trainers:
        log(f"warm start: no stage in dvc.yaml takes {WARM_START_FLAG}"
            + (f" among {only}" if only else "") + "; every run trains from scratch")
    return {"mode": mode, "stages": {t.task_id: stage_one(repo, t, mode, log) for t in trainers}}


def stage_one(repo: Path, trainer: Stage, mode: str, log=print) -> dict[str, Any]:
    """Put the checkpoint `trainer` should continue from where it looks for it.

    Both paths come from its command in dvc.yaml: `--warm-start-staged DIR`, and its `--out` (the previous
    checkpoint). DIR is one of the stage's deps, so dvc.lock records which checkpoint the model started from.
    It always exists (its `WARM_START_MARKER` is in git, as a dependency that does not exist fails `dvc
    repro`) and holds only that file when there is nothing to start from. DIR's name is the model's
    (`PACKAGE_PARTS`): `champion` uses that model's checkpoint in the production package and falls back to
    `previous` when nothing is in production yet; `previous` uses the last trained checkpoint in this
    workspace; `none` empties DIR.

    The staged checkpoint stays after the run, so the workspace keeps matching dvc.lock. And when the
    checkpoint to stage is the one this workspace trained last while DVC reports nothing changed for the
    training stage and its upstream (no new batch, same params and code), DIR is left as it is: staging it
    would retrain the model from itself on the same data, and after every promotion the champion *is* the
    last trained model, so each run would retrain for nothing.
    """
    dest = repo / option_of(trainer, WARM_START_FLAG)
    out = option_of(trainer, "--out")
    last = repo / out if out and (repo / out / "config.json").is_file() else None
    source, tag = None, None
    if mode == "champion":
        tag = production_tag()
        source = champion_checkpoint(tag, dest.name) if tag else None
        if source is None:
            log(f"warm start: no production model{f' with a {dest.name} checkpoint' if tag else ''} yet; "
                f"{trainer.address} uses the previous checkpoint")
    if source is None and mode != "none":
        source, tag = last, None
    staged = str(dest.relative_to(repo))
    if source is not None and last is not None and same_files(source, last) and not stage_changed(repo, trainer):
        log(f"warm start: {source} is the model {trainer.address} trained last and nothing it reads changed; "
            f"{staged} stays as dvc.lock records it, so the stage is not re-run")
        return {"mode": mode, "source": None, "unchanged": True, "staged": staged}
    # The folder is a dependency: a `dvc repro` by hand may be training from it right now, and dvc.lock
    # records it only when that stage ends. DVC's own lock tells; the folder is left alone then.
    with dvc_write_lock(repo, dest, f"llm_srec_retraining: prepare_warm_start into {staged}"):
        clear_staged(dest)
        if source is not None:
            shutil.copytree(source, dest, dirs_exist_ok=True)
    if source is None:
        log("warm start: off (orchestration.warm_start: none)" if mode == "none" else
            f"warm start: no checkpoint to continue from (first run); {trainer.address} trains from scratch")
        return {"mode": mode, "source": None, "staged": staged}
    log(f"warm start: {trainer.address} will continue from {source}" + (f" (production {tag})" if tag else ""))
    return {"mode": mode, "source": str(source), "champion": tag, "staged": staged}


def clear_staged(dest: Path) -> None:
    """Empty the staged warm-start folder, keeping its marker (the folder is a DVC dependency)."""
    if not (dest / WARM_START_MARKER).is_file():
        raise ConfigError(dest / WARM_START_MARKER, "the warm-start folder's marker is missing (DVC needs the folder "
                          "to exist even when there is no warm start, and git keeps no empty folder)",
                          f"restore it: git checkout -- {dest / WARM_START_MARKER}")
    for p in dest.iterdir():
        if p.name == WARM_START_MARKER:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def same_files(a: Path, b: Path) -> bool:
    """Whether two checkpoint folders hold the same files with the same bytes."""
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    if names != sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()):
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not mismatch and not errors


def stage_changed(repo: Path, stage: Stage) -> bool:
    """Whether `dvc status` reports anything for `stage` or the stages upstream of it (DVC's own check of
    deps, params, command and outs against dvc.lock), under the DAG's repository lock."""
    from dvc.repo import Repo

    dvcfile, _, name = stage.address.rpartition(":")
    target = f"{repo / (dvcfile or 'dvc.yaml')}:{name}"  # absolute: DVC resolves targets against the cwd
    with repo_lock(repo), Repo(str(repo)) as dvc:
        status = dvc.status(targets=[target], with_deps=True)
    # A stage that always runs (ingest_batches: files arrive outside DVC) is always listed; what it wrote,
    # if anything, shows as a changed dependency of the stage after it.
    return any(entry != ["always changed"] for entry in status.values())


def gate_decision(repo: Path, report: str) -> dict[str, Any]:
    """The gate's release decision, as its report records it (components/serving/decision.py): `release`
    (package and promote: `promoted`, or `provisional` for a first model that failed) or not (`rejected`),
    with the gate's `reason`, failed checks and checks. The decision is the gate's alone: never derived
    again here from the checks or the registry.

    A missing report, or one without a valid decision, is a DataError naming it (the task fails, so
    nothing is released without a gate).
    """
    gate = read_decision(repo / report)
    return {"release": gate["decision"] != "rejected", "decision": gate["decision"], "passed": gate["passed"],
            "failed_checks": gate["reasons"]["failed_checks"], "checks": gate["checks"], "reason": gate["reason"]}


def notify(callback: str | None, record: dict[str, Any], log=print) -> None:
    """Log the outcome and, if configured, call `package.module:function(record)`.

    A failing callback is logged and swallowed: a broken notifier must not fail the release it reports.
    """
    log(f"NOTIFY [{record.get('outcome')}] {record.get('reason', '')}".rstrip())
    if not callback:
        return
    module, _, name = str(callback).partition(":")
    try:
        getattr(importlib.import_module(module), name)(record)
    except Exception as e:  # noqa: BLE001 - see the docstring
        log(f"notify_callback {callback} failed: {type(e).__name__}: {e}")


def reload_serving(command: str | None, tag: str | None, log=print) -> dict[str, Any]:
    """After a promotion: run the configured reload command, or say how to pick the model up.

    `bentoml serve` loads the production model once, at startup, so a running server keeps serving
    the old one until it restarts (or the command below restarts it).
    """
    if not command:
        log(f"serving: production is now {tag}; restart `bentoml serve` to serve it "
            "(set orchestration.serving_reload_command to do this automatically)")
        return {"reloaded": False, "tag": tag}
    argv = shlex.split(command)
    log(f"serving: $ {command}")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "LLMSREC_PROMOTED_TAG": tag or ""})
    for line in (proc.stdout + proc.stderr).splitlines():
        log(line)
    if proc.returncode != 0:
        raise RuntimeError(f"orchestration.serving_reload_command exited {proc.returncode}: {command}")
    return {"reloaded": True, "tag": tag, "command": command}


def run_dir(repo: Path, run_id: str) -> Path:
    """reports/runs/<run id>/: this run's records (git-ignored)."""
    return repo / "reports" / "runs" / re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)


def record_error(repo: Path, run_id: str, task_id: str, error: BaseException | str | None) -> None:
    """Keep why a task failed, for the run summary (tasks may run on other workers)."""
    text = clip(str(error), MAX_MESSAGE) if error is not None else "failed (no exception recorded)"
    write_json(run_dir(repo, run_id) / "errors" / f"{task_id}.json",
               {"task": task_id, "error": text, "type": type(error).__name__ if error is not None else None,
                "at": datetime.now(UTC).isoformat(timespec="seconds")})


def read_errors(repo: Path, run_id: str) -> dict[str, str]:
    d = run_dir(repo, run_id) / "errors"
    return {p.stem: read_json(p)["error"] for p in sorted(d.glob("*.json"))} if d.is_dir() else {}


def metrics_line(repo: Path) -> dict[str, float]:
    path = repo / "reports" / "metrics.json"
    if not path.is_file():
        return {}
    return {k: v["ndcg@10"] for k, v in read_json(path).items() if isinstance(v, dict) and "ndcg@10" in v}


def outcome_of(states: dict[str, str], changed: dict[str, bool], decision: dict[str, Any] | None,
               before: str | None, after: str | None) -> tuple[str, str]:
    """(outcome, reason) of a run from its task states: failed | rejected | provisional | promoted | unchanged.

    `changed`: per DVC stage, whether it changed what dvc.lock records (runner.run_stage's `changed`)."""
    failed = sorted(t for t, s in states.items() if s in ("failed", "upstream_failed"))
    if failed:
        first = [t for t in failed if states[t] == "failed"] or failed
        if after != before:  # a task after `package` failed (reload_serving): the promotion itself stands
            return "failed", f"failed at {', '.join(first)}; production is now {after} (was {before or 'empty'})"
        return "failed", f"failed at {', '.join(first)}; production stays {before or 'empty'}"
    if decision is not None and not decision.get("release"):
        return "rejected", f"{decision.get('reason')}; production stays {before or 'empty'}"
    if after != before and decision is not None and decision.get("decision") == "provisional":
        return "provisional", f"{decision.get('reason')}; production is now {after}, flagged provisional"
    if after != before:
        return "promoted", f"production is now {after} (was {before or 'empty'})"
    if not any(changed.values()):
        return "unchanged", f"nothing changed since the last run; production stays {before or 'empty'}"
    return "unchanged", f"retrained, same package as production ({after or 'empty'})"


def write_summary(repo: Path, run_id: str, record: dict[str, Any]) -> Path:
    d = run_dir(repo, run_id)
    write_json(d / "summary.json", record)
    write_json(repo / "reports" / "runs" / "latest.json", record)
    return d / "summary.json"


def summary_lines(record: dict[str, Any]) -> list[str]:
    """What the summary task prints: one line per fact an operator looks for."""
    lines = [f"run {record['run_id']}: {record['outcome'].upper()}: {record['reason']}"]
    landing = record.get("landing") or {}
    if landing:
        lines.append(f"batches: {len(landing.get('accepted', []))} accepted, {len(landing.get('held', []))} held, "
                     f"{len(landing.get('duplicates', []))} duplicate, {len(landing.get('rejected', []))} rejected")
        lines += [f"  rejected {r['file']}: {r.get('reason')}" for r in landing.get("rejected", [])]
        judged = [r for key in ("accepted", "held") for r in landing.get(key, []) if r.get("drift")]
        if judged:  # components/data/drift.py: each batch's decision, and why when it is not a plain retrain
            decisions = [r["drift"]["decision"] for r in judged]
            lines.append("drift: " + ", ".join(f"{decisions.count(d)} {d}" for d in ("retrain", "flag", "hold")
                                               if d in decisions))
            lines += [f"  {r['drift']['decision']} {r['file']} ({r['batch_id']}): {'; '.join(r['drift']['reasons'])}"
                      + (f". {r['fix']}" if r.get("fix") else "") for r in judged if r["drift"]["decision"] != "retrain"]
    stages = record.get("stages") or {}
    if stages:
        lines.append("stages: " + ", ".join(
            f"{t} {v['state']}{' (ran)' if v.get('ran') else ' (cached)' if v.get('state') == 'success' else ''}"
            for t, v in stages.items()))
    for task, warm in ((record.get("warm_start") or {}).get("stages") or {}).items():
        if warm.get("source"):
            lines.append(f"warm start: {task} from {warm['source']}")
    if record.get("metrics"):
        lines.append("test NDCG@10: " + ", ".join(f"{k} {v:.4f}" for k, v in record["metrics"].items()))
    if record.get("report"):
        lines.append(f"report: {record['report']} (open it in a browser)")
    for task, err in (record.get("errors") or {}).items():
        lines.append(f"error in {task}: {err}")
    return lines
