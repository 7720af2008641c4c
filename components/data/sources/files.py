"""`files` source: a directory with interactions.{tsv,csv,parquet} and items.{tsv,csv,parquet}."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.data.readers import read_table
from components.data.schema import canonical_interactions, canonical_items
from components.errors import DataError

_EXTS = (".tsv", ".csv", ".parquet")


def find_table(directory: Path, stem: str) -> Path:
    if not directory.is_dir():
        raise DataError(directory, "directory not found", "set data.path to a directory holding interactions.* and items.*")
    found = [directory / f"{stem}{ext}" for ext in _EXTS if (directory / f"{stem}{ext}").exists()]
    if not found:
        raise DataError(directory / f"{stem}.*", "file not found",
                        f"put {stem}.tsv, {stem}.csv or {stem}.parquet in {directory}")
    if len(found) > 1:
        raise DataError(directory, f"several {stem} files: {[p.name for p in found]}", "keep exactly one of them")
    return found[0]


def load_files(directory: Path, columns: dict[str, str], timestamp_unit: str = "s") -> tuple[pd.DataFrame, pd.DataFrame]:
    inter_path = find_table(directory, "interactions")
    items_path = find_table(directory, "items")
    inter = read_table(inter_path, ["user_id", "item_id", "timestamp"], columns)
    items = read_table(items_path, ["item_id", "title"], columns)
    return (canonical_interactions(inter, str(inter_path), timestamp_unit),
            canonical_items(items, str(items_path)))
