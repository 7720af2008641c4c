"""Stage `ingest`: read the configured source into canonical Parquet, touching nothing raw.

Reads params `data` (and `seed` for the synthetic source), then appends the accepted
new-interaction batches from the raw store (`--batches`, filled by the `ingest_batches` stage,
components/stages/ingest_batches.py). Parsing problems that make a file unusable as a whole (missing, empty, wrong delimiter, missing columns, non-numeric timestamps)
fail here with the fix; row-level problems are left for `validate` to quarantine.

The store is read as a snapshot: the batches present when the stage starts, and only those. DVC records
the store's hash in dvc.lock after the stage ends, so the store must not change in between: under
`dvc repro`, DVC's own lock keeps `ingest_batches` from writing it while this stage runs, and anything
else that writes it meanwhile (the landing CLI run by hand) fails this stage, with nothing recorded,
rather than letting dvc.lock claim batches whose rows are not in the output.

`ingest.json` in the output records what was read (counts, source files, batch ids); the duration goes
to `--timings` (components/timings.py), never into the output.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from components.config import load_params
from components.data.batches import accepted_batches, merge_batches
from components.data.sources import load_source
from components.errors import DataError, stage_main
from components.io import fresh_dir, visible_files, write_json, write_parquet
from components.timings import write_timings


def store_changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> str:
    """What differs between two `visible_files` listings of the store, in a few words ('' if nothing)."""
    parts = []
    for label, paths in (("added", sorted(set(after) - set(before))), ("removed", sorted(set(before) - set(after))),
                         ("rewritten", sorted(p for p in set(before) & set(after) if before[p] != after[p]))):
        if paths:
            parts.append(f"{len(paths)} file(s) {label} ({', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''})")
    return "; ".join(parts)


@stage_main("ingest")
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True, help="directory for interactions/items Parquet")
    ap.add_argument("--cache", type=Path, default=Path("data/downloads"), help="download cache (not an output)")
    ap.add_argument("--batches", type=Path, help="raw store of accepted new-interaction batches, appended in order")
    ap.add_argument("--timings", type=Path, help="run record (duration, host): not a DVC output")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    cfg = params.data
    t0 = time.time()
    # The snapshot: the store's files and the batches among them, taken before anything slow (a download).
    snapshot = visible_files(args.batches) if args.batches else {}
    batches = accepted_batches(args.batches) if args.batches else []
    interactions, items = load_source(cfg, seed=params.seed, cache_dir=args.cache)
    interactions, items = merge_batches(interactions, items, batches)
    out = fresh_dir(args.out)
    write_parquet(interactions, out / "interactions.parquet")
    write_parquet(items, out / "items.parquet")
    write_json(out / "ingest.json", {
        "source": cfg.source,
        "interactions": len(interactions),
        "items": len(items),
        "files": sorted(set(interactions["_source"]) | set(items["_source"])),
        "batches": len(batches),
        "batch_ids": sorted({p.parent.name for p in batches}),
    })
    if args.batches and (changed := store_changes(snapshot, visible_files(args.batches))):
        shutil.rmtree(out)  # nothing downstream may read rows that dvc.lock would not match
        raise DataError(args.batches, f"changed while ingest read it: {changed}",
                        "something wrote the store outside `dvc repro` (e.g. `python -m components.data.landing "
                        "ingest` run by hand); land batches with `dvc repro -s ingest_batches`, which DVC keeps "
                        "from writing while ingest reads, and re-run `dvc repro`: nothing was recorded for this run")
    seconds = time.time() - t0
    write_timings(args.timings, "ingest", seconds)
    print(f"ingest: {len(interactions):,} interactions, {len(items):,} items from '{cfg.source}' "
          f"+ {len(batches)} batch(es) in {seconds:.1f}s")


if __name__ == "__main__":
    main()
