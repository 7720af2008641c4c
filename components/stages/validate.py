"""Stage `validate`: Great Expectations checks on the ingested data, with row-level quarantine.

The checks themselves are components/data/validation.py.

Reads params `validate`. Schema-level failures (a missing or mistyped column) fail the stage.
Row-level failures are written, with their reasons, to the quarantine directory and removed from
the validated output; the stage fails when they exceed `validate.max_bad_fraction`. Data Docs
HTML and a JSON summary (a DVC metric) are written on every run, passed or failed.

The Data Docs are a report of the run (Great Expectations stamps them with the run's time), so they are
not a DVC output; the summary holds only what the data decides, and the duration goes to `--timings`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from components.config import load_params
from components.data.validation import Outcome, validate
from components.errors import DataError, stage_main
from components.io import fresh_dir, write_json, write_parquet
from components.timings import write_timings


def _failure(outcome: Outcome, interactions: pd.DataFrame, quarantine: Path) -> DataError:
    s = outcome.summary
    worst = sorted(s["quarantined_by_expectation"].items(), key=lambda kv: -kv[1])[:3]
    fix = (f"inspect {quarantine}/interactions.parquet and reports/data_docs/index.html, fix the source, "
           "or raise validate.max_bad_fraction")
    ts = pd.to_numeric(interactions["timestamp"], errors="coerce").dropna()
    if len(ts) and ts.median() > 1e11:
        fix = "the timestamps look like milliseconds: set data.timestamp_unit: ms (or convert to seconds)"
    return DataError(
        ", ".join(sorted(set(interactions["_source"].astype(str))))[:300],
        f"{s['rows_quarantined']['interactions']} of {s['rows_checked']['interactions']} interaction rows "
        f"({s['bad_fraction']:.1%}) failed validation, above validate.max_bad_fraction={s['max_bad_fraction']}; "
        f"top failures: {dict(worst)}",
        fix,
    )


@stage_main("validate")
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--in", dest="inp", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quarantine", type=Path, required=True)
    ap.add_argument("--docs", type=Path, required=True)
    ap.add_argument("--summary", type=Path, required=True)
    ap.add_argument("--timings", type=Path, help="run record (duration, host): not a DVC output")
    args = ap.parse_args(argv)
    cfg = load_params(args.params).validate_

    t0 = time.time()
    interactions = pd.read_parquet(args.inp / "interactions.parquet")
    items = pd.read_parquet(args.inp / "items.parquet")
    outcome = validate(interactions, items, cfg, fresh_dir(args.docs), where=str(args.inp))

    # Quarantine and reports are written before deciding pass/fail: a failed run must leave the
    # evidence behind. The validated output is written only when the data passes.
    q = fresh_dir(args.quarantine)
    write_parquet(outcome.quarantine_interactions, q / "interactions.parquet")
    write_parquet(outcome.quarantine_items, q / "items.parquet")
    s = outcome.summary
    failed = s["bad_fraction"] > s["max_bad_fraction"] or s["interactions"] == 0
    s["passed"] = not failed
    write_json(args.summary, s)
    seconds = time.time() - t0
    write_timings(args.timings, "validate", seconds, passed=not failed)
    if failed:
        if args.out.exists():
            import shutil

            shutil.rmtree(args.out)
        raise _failure(outcome, interactions, args.quarantine)
    out = fresh_dir(args.out)
    write_parquet(outcome.interactions, out / "interactions.parquet")
    write_parquet(outcome.items, out / "items.parquet")
    print(f"validate: {s['rows_checked']['interactions']:,} rows checked, "
          f"{s['rows_quarantined']['interactions']:,} interactions and {s['rows_quarantined']['items']:,} items "
          f"quarantined ({s['bad_fraction']:.2%}) in {seconds:.1f}s; Data Docs in {args.docs}/index.html")


if __name__ == "__main__":
    main()
