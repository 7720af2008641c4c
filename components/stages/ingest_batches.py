"""Stage `ingest_batches`: the landing zone's run, as the DVC stage whose output is the raw batch store.

Moves every complete file of the landing zone (params `orchestration.landing`) into the raw store: each
is claimed, de-duplicated, validated on its own and accepted or rejected, exactly as
`python -m components.data.landing ingest` does (components/data/landing.py does the work). A rejected
batch fails the stage with its reason and fix, after the accepted ones are placed.

Why a stage: the store holds data every later model is trained on, so it belongs to the data version.
As this stage's output, every version of it is in DVC's cache and pinned by dvc.lock: `dvc push` sends
the accepted batches with the rest, and `dvc pull` brings them back into a fresh clone. And because DVC
runs the landing, DVC's own locks keep it from writing the store while `ingest` reads it (the second
`dvc` command stops with "busy" and is simply run again), so what dvc.lock records for `ingest` is what
`ingest` read. In dvc.yaml the output is `persist: true` (DVC must not delete the store before a run: it
only ever grows) and the stage is `always_changed` (files arrive outside DVC, so DVC cannot tell when
to run it; a run that finds nothing is quick and leaves the store, and so everything downstream, as it was).

Before landing anything the stage refuses a store that lacks every file dvc.lock records for it (a fresh
clone before `dvc pull`, or after `make clean`): landing into it would record a store without those
batches, and the next `ingest` would train without them.

The landing's outcome (accepted, held, duplicates, rejected) goes to the stage's run record (`--timings`,
components/timings.py) with its duration: the DAG's run summary reads it there. Each drift decision
(params `orchestration.drift`: retrain, flag, hold) is also appended to the model registry's events
(`drift_retrain`, `drift_flag`, `drift_hold`; components/serving/registry.py), beside the promotions it
may lead to. The registry lives in BentoML's home: where there is none yet (before the first package),
the stage says so and goes on, since the landing log and the run record hold the same decisions.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from components.config import load_params
from components.data import landing
from components.errors import ConfigError, DataError, PipelineError, stage_main
from components.io import read_json, visible_files
from components.serving import registry
from components.timings import write_timings


def recorded_output(lock: Path, path: Path) -> dict[str, Any] | None:
    """What `lock` (a dvc.lock) records for the stage output at `path`: {path, md5, nfiles, ...}, or None."""
    if not lock.is_file():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    for stage in stages.values():
        for out in stage.get("outs") or []:
            if Path(str(out.get("path", ""))) == Path(path):
                return out
    return None


def check_not_lost(store: Path, lock: Path, retracted: Path) -> None:
    """Raise DataError when dvc.lock records files in `store` and the workspace has none of them.

    A store emptied by `landing retract` (every batch it held moved to `retracted`, each with its
    retraction record) is what the operator asked for, not a lost data version, so it passes."""
    recorded = recorded_output(lock, store)
    retractions = retracted.is_dir() and any(retracted.glob(f"*/{landing.RETRACTION_META}"))
    if recorded and int(recorded.get("nfiles") or 0) > 0 and not visible_files(store) and not retractions:
        raise DataError(store, f"holds none of the {recorded['nfiles']} files that {lock} records for it "
                        f"(version {recorded.get('md5')}): the accepted batches of this data version are not here, "
                        "and landing now would record a store without them",
                        f"restore them first: `dvc checkout {store}` (from the local cache) or `dvc pull {store}` "
                        "(from the remote); to start an empty store on purpose, remove the ingest_batches entry "
                        f"from {lock}")


def log_drift_events(outcome: dict[str, Any] | None, log=print) -> int:
    """Append one registry event per drift decision of a landing run (`outcome`: LandingResult.as_dict()).
    Returns how many were written. Never raises for the registry: a missing BentoML home, or one that
    cannot be written, is reported and skipped (the landing log and the run record keep the decisions)."""
    judged = [r for key in ("accepted", "held") for r in (outcome or {}).get(key, []) if r.get("drift")]
    if not judged:
        return 0
    # BentoML's own default, read without importing BentoML (seconds) for a few lines of JSON.
    home = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
    if not home.is_dir():
        log(f"landing: {len(judged)} drift decision(s) not added to the registry's events: no BentoML home at "
            f"{home} yet (set BENTOML_HOME, or package a model first); they are in the landing log and run record")
        return 0
    written = 0
    for r in judged:
        d = r["drift"]
        reason = f"batch {r['batch_id']} ({r['file']}): " + ("; ".join(d.get("reasons") or []) or "no drift")
        try:
            registry.log_event(f"drift_{d['decision']}", None, reason, home=home)
            written += 1
        except (PipelineError, OSError) as e:
            log(f"landing: could not add the drift decision of batch {r['batch_id']} to the registry's events "
                f"in {home} ({e}); it is in the landing log and run record")
            break
    return written


@stage_main("ingest_batches")
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--store", type=Path, required=True, help="the raw store: this stage's output in dvc.yaml")
    ap.add_argument("--ingested", type=Path, default=Path("data/ingested"),
                    help="the last ingest's output, whose catalogue a batch's items are checked against")
    ap.add_argument("--lock", type=Path, default=Path("dvc.lock"), help="the lock file that records the store")
    ap.add_argument("--timings", type=Path, help="run record (duration, host, the landing's outcome): not a DVC "
                    "output")
    args = ap.parse_args(argv)
    cfg = load_params(args.params).orchestration.landing
    if Path(cfg.store) != args.store:
        raise ConfigError(args.params, f"orchestration.landing.store is {cfg.store}, but the ingest_batches stage "
                          f"writes --store {args.store}", "make dvc.yaml and params.yaml name the same folder")
    check_not_lost(args.store, args.lock, landing.Paths.from_config(cfg).retracted)
    args.store.mkdir(parents=True, exist_ok=True)  # DVC needs its output to exist, even before the first batch

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "landing.json"
        try:
            landing.main(["--params", args.params, "ingest", "--ingested", str(args.ingested),
                          "--record", str(record)])
        finally:  # a rejected batch fails the stage (SystemExit): its outcome is recorded all the same
            outcome = read_json(record) if record.is_file() else None
            log_drift_events(outcome)
            write_timings(args.timings, "ingest_batches", time.time() - t0, landing=outcome)


if __name__ == "__main__":
    main()
