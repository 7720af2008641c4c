"""What the CeleryExecutor costs: one run of the default pipeline under the LocalExecutor and under Celery (not CI).

    python -m benchmarks.celery_vs_local [--out benchmarks/results/scaleout/celery_vs_local.json]

Both runs start from the same commit of this repository (`git clone` of HEAD: commit first), on the embedded
default data and params.yaml, with nothing in production, on this machine:
- LocalExecutor: a scheduler runs every task in one checkout (orchestration.exchange off);
- CeleryExecutor: Redis, a `default` and a `gpu` Celery worker, each in its own checkout, stages passing data
  through a DVC remote (a local folder) and dvc.lock through a git branch (components/orchestration/exchange.py).
Each run is timed from the DAG run's start to its end, as Airflow's metadata DB records it, with every task's
time beside it. The target (issue 25): Celery at most 1.3x the LocalExecutor. Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from components.orchestration.stack import AirflowStack

REPO = Path(__file__).resolve().parents[1]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout


def origin_with_branches(tmp: Path) -> Path:
    """A bare repository of HEAD with branch `local` (exchange off) and `pipeline` (a DVC remote in tmp)."""
    src = tmp / "src"
    _git(tmp, "clone", "--quiet", str(REPO), str(src))
    _git(src, "checkout", "-qb", "local")
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "storage", str(tmp / "dvc-remote")], cwd=src,
                   check=True, capture_output=True)
    _git(src, "commit", "-qam", "DVC remote")
    _git(src, "checkout", "-qb", "pipeline")
    params = yaml.safe_load((src / "params.yaml").read_text())
    params["orchestration"].update(exchange={"dvc_remote": "storage", "git_remote": "origin", "git_branch": "pipeline"},
                                   schedule=None, trigger_on_batch=False)
    (src / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(src, "commit", "-qam", "exchange through the DVC remote")
    _git(src, "checkout", "-q", "local")
    params = yaml.safe_load((src / "params.yaml").read_text())
    params["orchestration"].update(schedule=None, trigger_on_batch=False)
    (src / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(src, "commit", "-qam", "manual runs only")
    origin = tmp / "origin.git"
    _git(tmp, "clone", "--quiet", "--bare", str(src), str(origin))
    return origin


def one_run(stack: AirflowStack) -> dict:
    with stack:
        t0 = time.time()
        run = stack.trigger()
        state = stack.wait_run(run, timeout=3600)
        wall = time.time() - t0
        return {"state": state, "wall_seconds_from_trigger": round(wall, 1), "seconds": stack.durations(run),
                "tasks": stack.task_instances(run)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scaleout" / "celery_vs_local.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="celery_vs_local_") as tmp:
        tmp = Path(tmp)
        origin = origin_with_branches(tmp)
        local = one_run(AirflowStack(tmp / "local", str(origin), "local", executor="LocalExecutor",
                                     env={"BENTOML_HOME": str(tmp / "local-bentoml")}))
        celery = one_run(AirflowStack(tmp / "celery", str(origin), "pipeline", queues=("default", "gpu")))
    ratio = celery["seconds"]["run"] / local["seconds"]["run"]
    result = {"benchmark": "celery_vs_local", "commit": _git(REPO, "rev-parse", "HEAD").strip(),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": __import__("os").cpu_count(),
                          "python": platform.python_version()},
              "local": local, "celery": celery, "celery_over_local": round(ratio, 3), "target": 1.3}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    tasks = sorted(set(local["seconds"]) | set(celery["seconds"]), key=lambda t: t != "run")
    print(f"{'task':<20} {'local s':>9} {'celery s':>9}")
    for t in tasks:
        print(f"{t:<20} {local['seconds'].get(t, float('nan')):>9.1f} {celery['seconds'].get(t, float('nan')):>9.1f}")
    print(f"celery / local: {ratio:.3f} (target <= 1.3); states {local['state']}, {celery['state']} -> {args.out}")


if __name__ == "__main__":
    main()
