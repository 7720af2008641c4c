"""The release side of a DAG run: warm start, the gate decision, rejection, serving reload, the summary.

The champion is never touched here. Promotion happens only inside the `package` stage, as its last
step; a run that fails or is rejected anywhere leaves the registry's production pointer as it was.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.errors import ConfigError
from components.io import read_json, write_json
from components.orchestration.graph import Stage, option_of

WARM_START_FLAG = "--warm-start-staged"


def production_tag() -> str | None:
    """The registry's production tag (issue 5's components.serving.registry), None when there is none yet."""
    try:
        from components.serving.registry import production_tag as tag
    except ImportError:  # the registry is not part of this checkout
        return None
    return tag()


def champion_sasrec(tag: str) -> Path | None:
    """The SASRec checkpoint inside the production package."""
    from components.serving.packaged import sasrec_dir
    from components.serving.registry import get_model

    path = sasrec_dir(Path(get_model(tag).path))
    return path if (path / "config.json").is_file() else None


def stage_warm_start(repo: Path, stages: list[Stage], mode: str, log=print) -> dict[str, Any]:
    """Put the checkpoint SASRec should continue from where the training stage looks for it.

    The stage and both paths come from dvc.yaml: the stage whose command has `--warm-start-staged
    DIR`, and its `--out` (the previous checkpoint). DIR is not a DVC output, so DVC leaves it alone.
    `champion` uses the production package's SASRec and falls back to `previous` when nothing is in
    production yet; `previous` uses the last trained checkpoint in this workspace.
    """
    trainer = next((s for s in stages if option_of(s, WARM_START_FLAG)), None)
    if trainer is None:
        log(f"warm start: no stage in dvc.yaml takes {WARM_START_FLAG}; every run trains from scratch")
        return {"mode": mode, "source": None}
    dest = repo / option_of(trainer, WARM_START_FLAG)
    if dest.exists():
        shutil.rmtree(dest)
    if mode == "none":
        log("warm start: off (orchestration.warm_start: none)")
        return {"mode": mode, "source": None}
    source, tag = None, None
    if mode == "champion":
        tag = production_tag()
        source = champion_sasrec(tag) if tag else None
        if source is None:
            log(f"warm start: no production model{' with a SASRec checkpoint' if tag else ''} yet; "
                "using the previous checkpoint")
    if source is None:
        previous = option_of(trainer, "--out")
        candidate = repo / previous if previous else None
        source = candidate if candidate is not None and (candidate / "config.json").is_file() else None
        tag = None
    if source is None:
        log("warm start: no checkpoint to continue from (first run); SASRec trains from scratch")
        return {"mode": mode, "source": None}
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, dest)
    log(f"warm start: {trainer.address} will continue from {source}" + (f" (production {tag})" if tag else ""))
    return {"mode": mode, "source": str(source), "champion": tag, "staged": str(dest.relative_to(repo))}


def clear_warm_start(repo: Path, stages: list[Stage]) -> None:
    """Remove the staged checkpoint after the run, so a later hand-run `dvc repro` trains as params say."""
    for s in stages:
        if staged := option_of(s, WARM_START_FLAG):
            shutil.rmtree(repo / staged, ignore_errors=True)


def gate_decision(repo: Path, report: str) -> dict[str, Any]:
    """Read the gate's report and decide: release (package + promote) or reject.

    A missing or malformed report rejects: nothing is promoted without a gate. The first model may
    be released although it failed when the gate says so (`gate.first_model: provisional`, decided by
    components.stages.package.decide), so that `bentoml serve` has something to serve.
    """
    path = repo / report
    if not path.is_file():
        return {"release": False, "decision": "rejected", "passed": False, "failed_checks": [],
                "reason": f"no gate report at {report}: dvc.yaml needs the `gate` stage; nothing is promoted "
                          "without one"}
    try:
        gate = read_json(path)
        checks = gate["checks"]
        passed = bool(gate["passed"])
        failed = [c["name"] for c in checks if not c["passed"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(path, f"is not a gate report ({type(e).__name__}: {e})",
                          "re-run the gate stage: dvc repro -f -s gate") from None
    decision = "promoted" if passed else "rejected"
    if not passed:
        try:
            from components.stages.package import decide
        except ImportError:
            decide = None
        if decide is not None:
            decision = decide(gate, production_tag())
    reason = ("gate passed" if passed else
              f"gate failed: {', '.join(failed) or 'no check passed'}"
              + (" (first model: released as provisional)" if decision == "provisional" else ""))
    return {"release": decision != "rejected", "decision": decision, "passed": passed, "failed_checks": failed,
            "checks": checks, "reason": reason}


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
    text = str(error) if error is not None else "failed (no exception recorded)"
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


def outcome_of(states: dict[str, str], ran: dict[str, bool], decision: dict[str, Any] | None,
               before: str | None, after: str | None) -> tuple[str, str]:
    """(outcome, reason) of a run from its task states: failed | rejected | provisional | promoted | unchanged."""
    failed = sorted(t for t, s in states.items() if s in ("failed", "upstream_failed"))
    if failed:
        first = [t for t in failed if states[t] == "failed"] or failed
        return "failed", f"failed at {', '.join(first)}; production stays {before or 'empty'}"
    if decision is not None and not decision.get("release"):
        return "rejected", f"{decision.get('reason')}; production stays {before or 'empty'}"
    if after != before and decision is not None and decision.get("decision") == "provisional":
        return "provisional", f"{decision.get('reason')}; production is now {after}, flagged provisional"
    if after != before:
        return "promoted", f"production is now {after} (was {before or 'empty'})"
    if not any(ran.values()):
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
        lines.append(f"batches: {len(landing.get('accepted', []))} accepted, {len(landing.get('duplicates', []))} "
                     f"duplicate, {len(landing.get('rejected', []))} rejected")
        lines += [f"  rejected {r['file']}: {r.get('reason')}" for r in landing.get("rejected", [])]
    stages = record.get("stages") or {}
    if stages:
        lines.append("stages: " + ", ".join(
            f"{t} {v['state']}{' (ran)' if v.get('ran') else ' (cached)' if v.get('state') == 'success' else ''}"
            for t, v in stages.items()))
    if record.get("warm_start", {}).get("source"):
        lines.append(f"warm start from {record['warm_start']['source']}")
    if record.get("metrics"):
        lines.append("test NDCG@10: " + ", ".join(f"{k} {v:.4f}" for k, v in record["metrics"].items()))
    for task, err in (record.get("errors") or {}).items():
        lines.append(f"error in {task}: {err}")
    return lines


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
