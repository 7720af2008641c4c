"""New-interaction batches: the files that arrive after the base source, and how they join it.

A batch is one file in the canonical schema: `user_id`, `item_id`, `timestamp` (Unix seconds), plus
`title` (and optionally `description`) for items the catalogue does not know yet. CSV, TSV, Parquet
and JSON Lines are read. Accepted batches live in the raw store (`data/batches/<batch_id>/<file>`,
written by components/data/landing.py); `ingest` appends them, in arrival order, to the base source.

Idempotency is per row: an interaction is its (`user_id`, `item_id`, `timestamp`), and a batch row whose
key is already in the base source or an earlier batch is dropped when batches are merged (the landing
zone counts them when it accepts the batch), so re-sending rows in another file never duplicates them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from components.data.readers import read_table
from components.data.schema import canonical_interactions, canonical_items

BATCH_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl")
BATCH_META = "batch.json"  # written next to the raw file when a batch is accepted
ROW_KEY = ["user_id", "item_id", "timestamp"]  # what makes two interactions the same one


def read_batch(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Canonical (interactions, items) of one batch file; items only where a row carries a title."""
    df = read_table(Path(path), ["user_id", "item_id", "timestamp"])
    inter = canonical_interactions(df, str(path))
    if "title" not in df.columns:
        return inter, canonical_items(df.iloc[:0].assign(title=pd.Series(dtype="string")), str(path))
    titled = df[df["title"].notna() & (df["title"].astype("string").str.strip() != "")]
    items = canonical_items(titled, str(path))
    # One catalogue row per distinct (item_id, title, description): a batch repeats an item on every
    # interaction row. Conflicting titles for one item stay, and validation quarantines the later one.
    items = items.drop_duplicates(subset=["item_id", "title", "description"], keep="first")
    return inter, items.reset_index(drop=True)


def accepted_batches(store: Path) -> list[Path]:
    """The raw files of the accepted batches, in arrival order (batch ids start with the UTC arrival time).

    Directories whose name starts with '.' are batches still being written (renamed into place
    when complete), so a reader never sees half a batch.
    """
    store = Path(store)
    if not store.is_dir():
        return []
    files = []
    for d in sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files += sorted(f for f in d.iterdir() if f.suffix.lower() in BATCH_SUFFIXES)
    return files


def row_keys(interactions: pd.DataFrame) -> pd.MultiIndex:
    """The (user_id, item_id, timestamp) keys of the rows that have all three (ids as text, Unix seconds);
    rows missing one are left for `validate` to quarantine, so they never match."""
    k = interactions[ROW_KEY].dropna()
    return pd.MultiIndex.from_arrays([k["user_id"].astype(str).to_numpy(), k["item_id"].astype(str).to_numpy(),
                                      k["timestamp"].astype("int64").to_numpy()], names=ROW_KEY)


def already_present(interactions: pd.DataFrame, known: pd.MultiIndex) -> np.ndarray:
    """Boolean mask [len(interactions)]: rows whose key is in `known` (see `row_keys`)."""
    complete = interactions[ROW_KEY].notna().all(axis=1).to_numpy()
    out = np.zeros(len(interactions), dtype=bool)
    if complete.any() and len(known):
        out[complete] = row_keys(interactions[complete]).isin(known)
    return out


def merge_batches(interactions: pd.DataFrame, items: pd.DataFrame, batches: list[Path], *,
                  dropped: dict[str, int] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Append batches to the base tables. An item already in the catalogue keeps its title there;
    a batch only adds items that are new. Rows keep their lineage (`_source` = the batch file).

    A batch row whose (user_id, item_id, timestamp) is already in the base table or an earlier batch
    is dropped (a producer re-sending rows must not make `validate` fail on duplicates); duplicates
    inside one table are left for `validate` to quarantine. `dropped`, if given, receives
    {batch file: rows dropped}."""
    inters, catalogue = [interactions], [items]
    known = set(items["item_id"].dropna().astype(str))
    known_rows = row_keys(interactions).unique()
    for path in batches:
        b_inter, b_items = read_batch(path)
        again = already_present(b_inter, known_rows)
        if dropped is not None:
            dropped[str(path)] = int(again.sum())
        b_inter = b_inter[~again]
        known_rows = known_rows.append(row_keys(b_inter)).unique()
        new = b_items[~b_items["item_id"].astype(str).isin(known)]
        known |= set(new["item_id"].dropna().astype(str))
        inters.append(b_inter)
        catalogue.append(new)
    if len(inters) == 1:
        return interactions, items
    return (pd.concat(inters, ignore_index=True), pd.concat(catalogue, ignore_index=True))
