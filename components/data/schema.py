"""The canonical data model every source is turned into.

interactions: user_id (str), item_id (str), timestamp (int64, Unix seconds, UTC)
items:        item_id (str), title (str, non-empty), description (str, optional)

Ingested frames also carry lineage columns (`_source`: the file a row came from, `_row`: its
1-based record number there, or its line in JSON Lines) so a quarantined row can be traced back to
the untouched raw file. A JSON Lines line that could not be read at all is a row with `_error` (the
reason) and `_raw` (the line's bytes), for `validate` to quarantine.
"""

from __future__ import annotations

import html
import re
from decimal import Decimal

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


def clean_ids(s: pd.Series, source: str = "data", column: str = "id") -> pd.Series:
    """Ids are strings, whatever the column type; surrounding whitespace is never meaningful.

    Integer columns (any width, nullable or not) become their digits. Float and decimal values that are
    whole numbers (what a writer with NaN-for-null makes of an integer column) become their integer
    text, so 7, 7.0, 7.00 and "7" are one id. Fractional values, and floats too large to hold every
    digit (2^53, or 2^24 for float32), are refused: such ids would not survive a round trip. Booleans
    are refused. Missing stays missing. Raises DataError naming `source`, `column` and the fix.
    """
    if pd.api.types.is_bool_dtype(s):
        raise DataError(source, f"column '{column}' is boolean, not an id", f"map the right column to {column}")
    if pd.api.types.is_integer_dtype(s):
        return s.astype("string")
    if pd.api.types.is_float_dtype(s):
        exact = 2**24 if str(s.dtype).lower() in ("float32", "float[pyarrow]") else 2**53
        return _whole_numbers(s.dropna().astype("float64").to_numpy(), s, exact, source, column)
    if s.dtype == object and s.map(lambda v: isinstance(v, (bool, np.bool_))).any():
        raise DataError(source, f"column '{column}' holds booleans, not ids", f"map the right column to {column}")
    if s.dtype == object and s.map(lambda v: isinstance(v, (int, float, Decimal, np.number))).any():
        return s.map(lambda v: _number_id(v, source, column)).astype("string").str.strip()
    return s.astype("string").str.strip()


def _whole_numbers(values: np.ndarray, s: pd.Series, exact: int, source: str, column: str) -> pd.Series:
    bad = values[(values % 1 != 0) | ~np.isfinite(values)]
    if len(bad):
        raise DataError(source, f"column '{column}' holds non-integral numbers (e.g. {bad[0]!r})",
                        f"ids must be text or whole numbers: export {column} as a string or integer column")
    if len(values) and np.abs(values).max() >= exact:
        raise DataError(source, f"column '{column}' is a float column with values beyond {exact:,}, whose digits "
                        "may already be lost", f"export {column} as a string or integer column")
    return s.astype("Float64").astype("Int64").astype("string")


def _number_id(v, source: str, column: str):
    """One id from a mixed column: text as it is, a whole number as its digits, anything else refused."""
    if v is None or isinstance(v, str) or (isinstance(v, float) and np.isnan(v)):
        return v
    d = Decimal(str(v)) if not isinstance(v, Decimal) else v
    if d != d.to_integral_value():
        raise DataError(source, f"column '{column}' holds the non-integral number {v!r}",
                        f"ids must be text or whole numbers: export {column} as a string or integer column")
    return str(int(d))


ISO_HINT = "ISO-8601, e.g. 2024-05-01T12:00:00Z (no offset = UTC), or Unix seconds"


def parse_timestamps(raw: pd.Series, source: str, unit: str = "s") -> pd.Series:
    """Parse a timestamp column to nullable int64 Unix seconds, UTC.

    Accepts typed datetimes (Parquet `timestamp`, naive = UTC, any resolution), numbers in `unit`
    (s or ms) and ISO-8601 text (no offset = UTC). Single unparsable values become <NA> and are
    quarantined by validation. A column that is mostly neither (e.g. `01/02/2020`, which may be
    1 Feb or 2 Jan) is a schema problem and fails here with the fix.
    """
    if unit not in ("s", "ms"):
        raise DataError(source, f"unknown timestamp unit '{unit}'", "set data.timestamp_unit to 's' or 'ms'")
    if pd.api.types.is_datetime64_any_dtype(raw):
        return _datetime_seconds(raw if getattr(raw.dt, "tz", None) is not None else raw.dt.tz_localize("UTC"))
    text = raw.astype("string").str.strip()
    present = text.notna() & (text != "")
    num = pd.to_numeric(text.where(present), errors="coerce")
    bad = present & num.isna()
    if present.sum() and bad.sum() > 0.5 * present.sum():
        digits = text.str.fullmatch(r"[+-]?\d+(\.\d*)?").fillna(False).astype(bool)
        # Parsed apart: in one call pandas applies an earlier value's UTC offset to later naive ones.
        offset = text.str.contains(r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$", regex=True).fillna(False).astype(bool)
        iso = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
        for has_offset in (True, False):
            part = present & ~digits & (offset == has_offset)
            if part.any():
                parsed = pd.to_datetime(text[part], format="ISO8601", utc=True, errors="coerce")
                iso[part] = parsed.dt.as_unit("ns") if hasattr(parsed.dt, "as_unit") else parsed
        not_iso = present & ~digits & iso.isna()
        if not_iso.sum() > 0.5 * present.sum():
            example = text[not_iso].iloc[0]
            raise DataError(source, f"column 'timestamp' is neither numbers nor ISO-8601 dates "
                            f"({int(not_iso.sum())} of {int(present.sum())} values, e.g. '{example}')",
                            f"write {ISO_HINT} (or milliseconds with data.timestamp_unit: ms)")
        return _datetime_seconds(iso)  # a few numeric or broken values among dates: quarantined as missing
    if unit == "ms":
        num = num / 1000.0
    num = num.where(np.isfinite(num))
    return np.floor(num).astype("Int64")


def _datetime_seconds(ts: pd.Series) -> pd.Series:
    """tz-aware datetimes -> whole Unix seconds (floor), NaT -> <NA>; in the column's own resolution, so
    dates past 2262 (a `timestamp[s]` sentinel like 3000-01-01) do not overflow nanoseconds."""
    naive = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    unit = getattr(naive.dt, "unit", "ns")
    ticks = naive.to_numpy().astype("int64")
    seconds = np.floor_divide(ticks, {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit])
    return pd.Series(pd.array(seconds, dtype="Int64"), index=ts.index).mask(naive.isna())


def canonical_interactions(df: pd.DataFrame, source: str, unit: str = "s") -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "user_id": clean_ids(df["user_id"], source, "user_id"),
            "item_id": clean_ids(df["item_id"], source, "item_id"),
            "timestamp": parse_timestamps(df["timestamp"], source, unit),
        }
    )
    return _with_lineage(out, df, source)


def canonical_items(df: pd.DataFrame, source: str) -> pd.DataFrame:
    desc = df["description"] if "description" in df.columns else pd.Series("", index=df.index)
    out = pd.DataFrame(
        {
            "item_id": clean_ids(df["item_id"], source, "item_id"),
            "title": clean_text(df["title"]),
            "description": clean_text(desc),
        }
    )
    return _with_lineage(out, df, source)


def _with_lineage(out: pd.DataFrame, df: pd.DataFrame, source: str) -> pd.DataFrame:
    out["_source"] = df["_source"].astype(str).to_numpy() if "_source" in df.columns else source
    out["_row"] = df["_row"].to_numpy() if "_row" in df.columns else np.arange(1, len(df) + 1, dtype=np.int64)
    if "_error" in df.columns:  # unreadable lines (JSON Lines): validate quarantines them with their bytes
        out["_error"] = df["_error"].astype("string").to_numpy()
        out["_raw"] = df["_raw"].to_numpy()
    return out.reset_index(drop=True)
