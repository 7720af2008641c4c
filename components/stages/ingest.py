"""Stage `ingest`: read the configured source into canonical Parquet, touching nothing raw.

Reads params `data` (and `seed` for the synthetic source), then appends the accepted
new-interaction batches from the raw store (`--batches`, filled by the landing zone,
components/data/landing.py). Parsing problems that make a file unusable as a whole (missing, empty, wrong delimiter, missing columns, non-numeric timestamps)
fail here with the fix; row-level problems are left for `validate` to quarantine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from components.config import load_params
from components.data.batches import accepted_batches, merge_batches
from components.data.sources import load_source
from components.errors import stage_main
from components.io import fresh_dir, write_json, write_parquet


@stage_main("ingest")
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True, help="directory for interactions/items Parquet")
    ap.add_argument("--cache", type=Path, default=Path("data/downloads"), help="download cache (not an output)")
    ap.add_argument("--batches", type=Path, help="raw store of accepted new-interaction batches, appended in order")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    cfg = params.data
    t0 = time.time()
    interactions, items = load_source(cfg, seed=params.seed, cache_dir=args.cache)
    batches = accepted_batches(args.batches) if args.batches else []
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
        "seconds": round(time.time() - t0, 2),
    })
    print(f"ingest: {len(interactions):,} interactions, {len(items):,} items from '{cfg.source}' "
          f"+ {len(batches)} batch(es) in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
