"""The canonical data model every source is turned into.

interactions: user_id (str), item_id (str), timestamp (int64, Unix seconds, UTC)
items:        item_id (str), title (str, non-empty), description (str, optional)

Ingested frames also carry lineage columns (`_source`: the file a row came from, `_row`: its
1-based record number there) so a quarantined row can be traced back to the untouched raw file.
"""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd

from components.errors import DataError

INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp"]
ITEM_COLUMNS = ["item_id", "title", "description"]
LINEAGE_COLUMNS = ["_source", "_row"]

_WS = re.compile(r"\s+")


def clean_text(s: pd.Series) -> pd.Series:
    """Unescape HTML entities (twice, as scraped titles are often double-escaped) and normalise whitespace."""
    s = s.fillna("").astype(str)
    s = s.map(lambda t: html.unescape(html.unescape(t)) if "&" in t else t)
    return s.str.replace(_WS, " ", regex=True).str.strip()


def clean_ids(s: pd.Series) -> pd.Series:
    """Ids are strings; surrounding whitespace is never meaningful. Missing stays missing."""
    out = s.astype("string").str.strip()
    return out


def parse_timestamps(raw: pd.Series, source: str, unit: str = "s") -> pd.Series:
    """Parse a timestamp column to nullable int64 Unix seconds.

    Single unparsable values become <NA> and are quarantined by validation. A column that is
    mostly non-numeric is a schema problem (e.g. ISO dates) and fails here with the fix.
    """
    if unit not in ("s", "ms"):
        raise DataError(source, f"unknown timestamp unit '{unit}'", "set data.timestamp_unit to 's' or 'ms'")
    text = raw.astype("string").str.strip()
    present = text.notna() & (text != "")
    num = pd.to_numeric(text.where(present), errors="coerce")
    bad = present & num.isna()
    if present.sum() and bad.sum() > 0.5 * present.sum():
        example = text[bad].iloc[0]
        raise DataError(
            source,
            f"column 'timestamp' is not numeric ({int(bad.sum())} of {int(present.sum())} values, e.g. '{example}')",
            "store Unix seconds (or milliseconds with data.timestamp_unit: ms)",
        )
    if unit == "ms":
        num = num / 1000.0
    num = num.where(np.isfinite(num))
    return np.floor(num).astype("Int64")


def canonical_interactions(df: pd.DataFrame, source: str, unit: str = "s") -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "user_id": clean_ids(df["user_id"]),
            "item_id": clean_ids(df["item_id"]),
            "timestamp": parse_timestamps(df["timestamp"], source, unit),
        }
    )
    return _with_lineage(out, df, source)


def canonical_items(df: pd.DataFrame, source: str) -> pd.DataFrame:
    desc = df["description"] if "description" in df.columns else pd.Series("", index=df.index)
    out = pd.DataFrame(
        {
            "item_id": clean_ids(df["item_id"]),
            "title": clean_text(df["title"]),
            "description": clean_text(desc),
        }
    )
    return _with_lineage(out, df, source)


def _with_lineage(out: pd.DataFrame, df: pd.DataFrame, source: str) -> pd.DataFrame:
    out["_source"] = df["_source"].astype(str).to_numpy() if "_source" in df.columns else source
    out["_row"] = df["_row"].to_numpy() if "_row" in df.columns else np.arange(1, len(df) + 1, dtype=np.int64)
    return out.reset_index(drop=True)
