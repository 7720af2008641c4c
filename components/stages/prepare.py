"""Stage `prepare`: filter, index, split, and fix the evaluation candidates once for every model.

Reads params `data.min_user_interactions`, `data.min_item_interactions`, `data.max_users`,
`candidates` and `seed`. The k-core runs on all users; `data.max_users` then draws a seeded sample of the
users that passed it, with their whole histories (no second k-core, so the sample keeps its size). Writes to the output directory:

- `items.parquet`: idx (1..N; 0 is padding), item_id, title, description: the catalogue.
- `users.parquet`: idx (1..U), user_id.
- `sequences.parquet`: user_idx, items, timestamps (full chronological history, as lists).
  Leave-last-out: the last item is test, the second-to-last validation, the rest training.
- `candidates.parquet`: split (valid/test), user_idx, positive, negatives (list): each evaluated
  user's positive plus `candidates.num_negatives` items they never interacted with, sampled once.
- `meta.json`: counts, the index-mapping hashes, and the params used (no duration: it would change the
  output's hash on every re-run and make every model stale; that goes to `--timings`).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import CandidateParams, DataParams, load_params
from components.data.preprocess import chronological, kcore, subsample_users
from components.errors import ConfigError, DataError, stage_main
from components.io import fresh_dir, numbers_only, read_json, write_json, write_parquet
from components.timings import write_timings


def mapping_hash(ids: pd.Series) -> str:
    """Hash of an id list in index order: checkpoints and packages record it to detect a changed mapping."""
    return hashlib.sha256("\n".join(ids.astype(str)).encode()).hexdigest()[:16]


def sample_candidates(seqs: list[np.ndarray], n_items: int, num_negatives: int, rng: np.random.Generator,
                      user_ids: np.ndarray) -> np.ndarray:
    """For each sequence, `num_negatives` distinct items in 1..n_items the user never interacted with.

    `user_ids` [len(seqs)]: the users' own ids, for the error when one has too few such items.
    """
    def too_few(r: int, free: int) -> ConfigError:
        return ConfigError("params.yaml", f"candidates.num_negatives={num_negatives} but user '{user_ids[r]}' has "
                           f"only {free} never-interacted items",
                           "lower candidates.num_negatives or use a larger catalogue")

    if seqs and num_negatives >= n_items:  # no user has enough (each saw an item): before the [users, K] allocation
        raise too_few(0, n_items - len(np.unique(seqs[0])))
    out = np.empty((len(seqs), num_negatives), dtype=np.int32)
    for r, seq in enumerate(seqs):
        seen = np.unique(seq)
        free = n_items - len(seen)
        if free < num_negatives:
            raise too_few(r, free)
        if free < 4 * num_negatives:  # dense user: sample from the explicit complement
            pool = np.setdiff1d(np.arange(1, n_items + 1), seen, assume_unique=True)
            out[r] = rng.choice(pool, num_negatives, replace=False)
            continue
        picked: np.ndarray = np.empty(0, dtype=np.int64)
        while len(picked) < num_negatives:  # rejection sampling: few rounds when the user saw few items
            draw = rng.integers(1, n_items + 1, 2 * num_negatives)
            draw = draw[~np.isin(draw, seen)]
            picked = np.concatenate([picked, draw])
            _, first = np.unique(picked, return_index=True)
            picked = picked[np.sort(first)]
        out[r] = picked[:num_negatives]
    return out


def prepare(interactions: pd.DataFrame, items: pd.DataFrame, data_cfg: DataParams, cand_cfg: CandidateParams,
            seed: int) -> dict[str, Any]:
    """Pure function of the validated frames; returns the tables and the summary. The k-core keeps users
    with at least `data.min_user_interactions` (>= 3, checked by DataParams: train, valid and test need one)."""
    min_u, min_i = data_cfg.min_user_interactions, data_cfg.min_item_interactions
    df, passes = kcore(interactions, min_u, min_i)
    # The subsample comes after the k-core and is not k-cored again: a sampled user keeps the whole
    # history that passed the filter, so `max_users` users remain. Re-filtering cascades on sparse
    # catalogues (Amazon 5-core data: 3,000 sampled users shrank to 222) and the sample would no longer
    # be the one asked for. Items then need fewer than min_item interactions within the sample.
    df = subsample_users(df, data_cfg.max_users, seed)
    if df.empty:
        raise DataError("validated interactions", f"nothing is left after the {min_u}/{min_i}-core filter",
                        "lower data.min_user_interactions / data.min_item_interactions, or add data")

    df = chronological(df)
    user_ids = np.sort(df["user_id"].astype(str).unique())
    item_ids = np.sort(df["item_id"].astype(str).unique())
    users = pd.DataFrame({"idx": np.arange(1, len(user_ids) + 1, dtype=np.int32), "user_id": user_ids})
    catalogue = items.assign(item_id=items["item_id"].astype(str)).drop_duplicates("item_id").set_index("item_id")
    items_out = pd.DataFrame({"idx": np.arange(1, len(item_ids) + 1, dtype=np.int32), "item_id": item_ids})
    items_out["title"] = catalogue["title"].reindex(item_ids).to_numpy()
    items_out["description"] = catalogue["description"].reindex(item_ids).fillna("").to_numpy()

    u = np.searchsorted(user_ids, df["user_id"].astype(str).to_numpy()) + 1
    i = (np.searchsorted(item_ids, df["item_id"].astype(str).to_numpy()) + 1).astype(np.int32)
    ts = df["timestamp"].astype("int64").to_numpy()
    bounds = np.flatnonzero(np.diff(u)) + 1  # df is sorted by user, so each user is one run
    item_lists, ts_lists = np.split(i, bounds), np.split(ts, bounds)
    seq = pd.DataFrame({"user_idx": u[np.r_[0, bounds]].astype(np.int32), "items": item_lists, "timestamps": ts_lists})

    num_neg, max_eval = cand_cfg.num_negatives, cand_cfg.max_users
    rng = np.random.default_rng(seed)
    chosen = np.arange(len(seq))
    if max_eval and len(seq) > max_eval:
        chosen = np.sort(rng.choice(len(seq), max_eval, replace=False))
    cand_frames = []
    for split, offset in (("valid", 2), ("test", 1)):
        pos = np.array([item_lists[r][-offset] for r in chosen], dtype=np.int32)
        neg = sample_candidates([item_lists[r] for r in chosen], len(item_ids), num_neg, rng,
                                user_ids[seq["user_idx"].to_numpy()[chosen] - 1])
        cand_frames.append(pd.DataFrame({"split": split, "user_idx": seq["user_idx"].to_numpy()[chosen],
                                         "positive": pos, "negatives": list(neg)}))
    candidates = pd.concat(cand_frames, ignore_index=True)

    lengths = seq["items"].map(len)
    summary = {
        "users": len(users), "items": len(items_out), "interactions": int(len(df)),
        "kcore_passes": passes, "evaluated_users": len(chosen),
        "sequence_length": {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 2),
                            "max": int(lengths.max())},
        "density": round(len(df) / (len(users) * len(items_out)), 6),
        "item_mapping_hash": mapping_hash(items_out["item_id"]),
        "user_mapping_hash": mapping_hash(users["user_id"]),
    }
    return {"items": items_out, "users": users, "sequences": seq, "candidates": candidates, "summary": summary}


@stage_main("prepare")
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--in", dest="inp", type=Path, required=True)
    ap.add_argument("--validation", type=Path, help="validate's JSON summary, for the quarantine count")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--summary", type=Path, required=True)
    ap.add_argument("--timings", type=Path, help="run record (duration, host): not a DVC output")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    data_cfg, cand_cfg = params.data, params.candidates

    t0 = time.time()
    result = prepare(pd.read_parquet(args.inp / "interactions.parquet"), pd.read_parquet(args.inp / "items.parquet"),
                     data_cfg, cand_cfg, params.seed)
    out = fresh_dir(args.out)
    for name in ("items", "users", "sequences", "candidates"):
        write_parquet(result[name], out / f"{name}.parquet")
    summary = result["summary"]
    if args.validation and args.validation.exists():
        summary["quarantined_rows"] = read_json(args.validation)["rows_quarantined"]["interactions"]
    # "eval" is the section's old name, kept in this record: renaming it would change data/prepared's hash,
    # and so retrain every model downstream of unchanged data.
    write_json(out / "meta.json", {**summary, "params": {"data": data_cfg.model_dump(mode="json"),
                                                         "eval": cand_cfg.model_dump(mode="json")}})
    write_json(args.summary, numbers_only(summary))  # a DVC metric: the mapping hashes stay in meta.json
    seconds = time.time() - t0
    write_timings(args.timings, "prepare", seconds)
    print(f"prepare: {summary['users']:,} users, {summary['items']:,} items, {summary['interactions']:,} "
          f"interactions ({summary['kcore_passes']} k-core passes), {summary['evaluated_users']:,} evaluated users "
          f"in {seconds:.1f}s")


if __name__ == "__main__":
    main()
