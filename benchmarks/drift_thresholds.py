"""Where `orchestration.drift`'s default thresholds come from: each check's value on batches of the same
distribution and on shifted ones (not CI).

    python -m benchmarks.drift_thresholds [--data-root ../shared/data] [--out benchmarks/results/drift_thresholds.json]

For the synthetic default and ML-1M (`ml-1m-seqrec`, all 6,040 users), the interactions are split by time:
the first 90% is the training data, and these batches are judged against it (components/data/drift.py):
- `same`: the last 10% by time, as batches arrive (and, for ML-1M, the last 1%, a smaller batch);
- `flip`: the same rows, each known item renamed so that the k-th most popular becomes the k-th least;
- `new50`: half the rows moved to 200 new items; `flip+new30`: both shifts at once.
Each check's value is printed with the decision params.yaml's thresholds give. The defaults hold when a
`same` batch retrains and every shifted one is flagged or held. Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import load_params
from components.data.drift import CHECKS, judge
from components.data.sources.synthetic import generate

REPO = Path(__file__).resolve().parents[1]


def time_split(inter: pd.DataFrame, frac: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    inter = inter.sort_values("timestamp", kind="stable").reset_index(drop=True)
    cut = int(len(inter) * frac)
    return inter.iloc[:cut], inter.iloc[cut:]


def flip(ref: pd.DataFrame, batch: pd.DataFrame) -> pd.DataFrame:
    order = ref["item_id"].value_counts().index.tolist()
    renamed = dict(zip(order, order[::-1], strict=True))
    return batch.assign(item_id=batch["item_id"].map(lambda i: renamed.get(i, i)))


def new_items(batch: pd.DataFrame, share: float, seed: int = 0) -> pd.DataFrame:
    out = batch.copy()
    pick = np.random.default_rng(seed).random(len(out)) < share
    out.loc[pick, "item_id"] = [f"NEW{k % 200:03d}" for k in range(int(pick.sum()))]
    return out


def cases(data_root: Path) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """name -> (training data, batch)."""
    syn = generate(load_params(REPO / "params.yaml").data.synthetic, seed=42)[0]
    ml = pd.read_csv(data_root / "ml-1m-seqrec" / "interactions.tsv", sep="\t", dtype={"user_id": str, "movie_id": str})
    ml = ml.rename(columns={"movie_id": "item_id"})
    out = {}
    for name, inter in (("synthetic", syn), ("ml1m", ml)):
        ref, same = time_split(inter, 0.9)
        out |= {f"{name} same": (ref, same), f"{name} flip": (ref, flip(ref, same)),
                f"{name} new50": (ref, new_items(same, 0.5)),
                f"{name} flip+new30": (ref, new_items(flip(ref, same), 0.3))}
    out["ml1m same 1%"] = time_split(ml, 0.99)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "drift_thresholds.json")
    args = ap.parse_args(argv)
    cfg = load_params(REPO / "params.yaml").orchestration.drift
    rows = {}
    print(f"{'batch':20s} {'rows':>7s} {'secs':>5s} {'decision':8s} " + " ".join(f"{c[:12]:>12s}" for c in CHECKS))
    for name, (ref, batch) in cases(args.data_root).items():
        t0 = time.perf_counter()
        d = judge(batch, ref, cfg, html_report=False)
        secs = time.perf_counter() - t0
        checks = d.record["checks"]
        rows[name] = {"rows": len(batch), "reference_rows": len(ref), "seconds": round(secs, 2),
                      "decision": d.decision, "reasons": d.reasons,
                      "values": {c: checks[c]["value"] for c in CHECKS}}
        cells = " ".join(f"{'-' if v is None else f'{v:.3f}':>11s}{checks[c]['decision'][0]}"
                         for c, v in rows[name]["values"].items())
        print(f"{name:20s} {len(batch):7d} {secs:5.1f} {d.decision:8s} {cells}", flush=True)
    print("(r/f/h/s after a value: that check's retrain / flag / hold / skipped; the first judge imports evidently)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"thresholds": cfg.model_dump(), "cases": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
