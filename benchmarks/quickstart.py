"""The README's quick start, run as a new user runs it, with its output and times recorded (not CI).

    python -m benchmarks.quickstart [--out benchmarks/results/quickstart.json]
    python -m benchmarks.report --readme README.md     # puts the recorded output into the README

What it runs: `git clone` of HEAD (commit first) into a scratch folder, then the README's two-command quick
start's first command as a user types it: `make setup` (a new `.venv`, every package from the index, pip's
cache allowed) and `make run` (the pipeline on the embedded synthetic default, into a BentoML home of its own,
so the model is the first one there, as on a new machine). Each is timed; `make run`'s closing summary (the
lines `srec run` prints after `dvc repro`) is kept word for word, with the host it ran on. The README shows
that summary, rendered from this file by `benchmarks/report.py` (`quickstart_block`), so it is always what
a run printed, never typed by hand.

Needs the CPU to itself: the times are the README's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.distill_throughput import cpu_model

REPO = Path(__file__).resolve().parents[1]
#: how `components/summary.py` starts each line of the run's summary
SUMMARY_STARTS = ("data: ", "test NDCG@10 ", "gate: ", "package: ")


def summary_lines(stdout: str) -> list[str]:
    """The run's closing summary (components/summary.py) from `make run`'s output, in order: the lines from
    its first line (`data: ...`, the last one in the output) on. Stages log lines that start alike before it
    (`gate: PROMOTED ...`), so only the block at the end counts."""
    lines = stdout.splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith(SUMMARY_STARTS[0])), default=len(lines))
    return [line for line in lines[start:] if line.startswith(SUMMARY_STARTS)]


def timed(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, str]:
    """Run `cmd`, its output teed to `log`; (seconds, stdout). Raises CalledProcessError naming the log."""
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - t0
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, f"see {log}")
    return seconds, proc.stdout


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "quickstart.json")
    ap.add_argument("--python", default="python3", help="the interpreter `make setup` builds the venv from")
    args = ap.parse_args(argv)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    if dirty:
        print(f"note: uncommitted changes are not in the clone (it runs {commit[:12]}):\n{dirty}")
    with tempfile.TemporaryDirectory(prefix="quickstart-") as tmp:
        clone = Path(tmp) / "llm-srec"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        # a new user's shell: no venv of ours on PATH, a store of its own
        path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if ".venv" not in p)
        env = {**os.environ, "PATH": path, "BENTOML_HOME": str(Path(tmp) / "bentoml")}
        env.pop("VIRTUAL_ENV", None)
        setup_s, _ = timed(["make", "setup", f"PYTHON={args.python}"], clone, env, Path(tmp) / "setup.log")
        print(f"make setup: {setup_s:.0f} s")
        run_s, out = timed(["make", "run"], clone, env, Path(tmp) / "run.log")
        print(f"make run: {run_s:.0f} s")
        lines = summary_lines(out)
        if len(lines) < 3:
            raise SystemExit(f"make run printed no summary; its output ends:\n{out[-2000:]}")
        result = {
            "command": "python -m benchmarks.quickstart", "commit": commit, "date": dt.date.today().isoformat(),
            "cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "setup_seconds": round(setup_s, 1), "run_seconds": round(run_s, 1), "summary": lines,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
