"""Amazon Reviews 2023 (McAuley Lab) raw JSON Lines: `<Category>.jsonl` and `meta_<Category>.jsonl`.

Plain or `.gz`. Reviews give user_id, parent_asin (the item) and timestamp in milliseconds; meta
gives parent_asin, title and description (a list of strings). Files are streamed line by line so a
multi-GB category never has to fit in memory as JSON.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import DataParams
from components.data.download import fetch
from components.data.readers import check_file, json_lines
from components.data.schema import canonical_interactions, canonical_items
from components.errors import ConfigError, DataError

# Layout of the published dataset; `data.url` is the base URL up to and including `raw`.
REVIEWS_DIR, META_DIR = "review_categories", "meta_categories"


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.exists():
            return candidate
    return None


def _paths(cfg: DataParams, cache_dir: Path) -> tuple[Path, Path]:
    category = cfg.category
    if not category:
        raise ConfigError("params.yaml", "data.source is 'amazon2023' but data.category is empty",
                          "set data.category, e.g. Industrial_and_Scientific")
    names = (f"{category}.jsonl", f"meta_{category}.jsonl")
    if cfg.path:
        directory = Path(cfg.path)
        found = [_find(directory, n) for n in names]
        for n, f in zip(names, found, strict=True):
            if f is None:
                raise DataError(directory / n, "file not found (plain or .gz)",
                                f"put {n} or {n}.gz in {directory}, or set data.url to download it")
        return found[0], found[1]
    if cfg.url:
        base = cfg.url.rstrip("/")
        return (fetch(f"{base}/{REVIEWS_DIR}/{names[0]}", cache_dir),
                fetch(f"{base}/{META_DIR}/{names[1]}", cache_dir))
    raise ConfigError("params.yaml", "data.source is 'amazon2023' but neither data.path nor data.url is set",
                      "set data.path to the folder with the JSONL files, or data.url to the dataset's raw/ URL")


def _records(path: Path, fields: tuple[str, ...]) -> pd.DataFrame:
    """The `fields` of every record, with lineage; a line that is not a JSON object becomes a row with
    `_error` and `_raw` (its bytes) that `validate` quarantines, so one bad line does not stop the ingest."""
    check_file(path)
    cols: dict[str, list] = {f: [] for f in fields}
    rows: list[int] = []
    errors: list[str | None] = []
    raws: list[bytes | None] = []
    try:
        for n, rec, raw, err in json_lines(path):
            for k in fields:
                cols[k].append(None if rec is None else rec.get(k))
            rows.append(n)
            errors.append(err)
            raws.append(None if err is None else raw)
    except (OSError, EOFError, zlib.error) as e:  # gzip: truncated (EOFError) or corrupt (BadGzipFile, zlib.error)
        raise DataError(path, f"cannot be read ({type(e).__name__}: {e})",
                        "re-download it; a .gz file may be truncated or corrupt") from None
    if not rows or all(e is not None for e in errors):
        raise DataError(path, "holds no records" if not rows else f"no line is a JSON object ({errors[0]})",
                        "re-download the file; this must be the original JSON Lines file, one object per line")
    df = pd.DataFrame(cols)
    df["_source"], df["_row"] = str(path), rows
    if any(e is not None for e in errors):
        df["_error"], df["_raw"] = pd.array(errors, dtype="string"), raws
    return df


def _description(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value if v)
    return "" if value is None else str(value)


def load_amazon(cfg: DataParams, cache_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    reviews_path, meta_path = _paths(cfg, cache_dir)
    reviews = _records(reviews_path, ("user_id", "parent_asin", "timestamp"))
    missing = [c for c in ("user_id", "parent_asin", "timestamp") if reviews[c].isna().all()]
    if missing:
        raise DataError(reviews_path, f"records have no {missing} field", "use the Amazon Reviews 2023 review file")
    meta = _records(meta_path, ("parent_asin", "title", "description"))
    if meta["parent_asin"].isna().all():
        raise DataError(meta_path, "records have no 'parent_asin' field", "use the Amazon Reviews 2023 meta file")
    reviews = reviews.rename(columns={"parent_asin": "item_id"})
    reviews["timestamp"] = reviews["timestamp"].astype("string")
    meta = meta.rename(columns={"parent_asin": "item_id"})
    meta["description"] = meta["description"].map(_description)
    return (canonical_interactions(reviews, str(reviews_path), unit="ms"),
            canonical_items(meta, str(meta_path)))
