"""The data checks: Great Expectations 1.x suites over the canonical tables, with row-level quarantine.

`validate(interactions, items, cfg)` runs one suite per table through an ephemeral GX context and
splits every row into accepted or quarantined (with a reason naming the failed expectation). The
`validate` stage (components/stages/validate.py) and the landing zone's per-batch check
(components/data/landing.py) both call it.

Two checks run on columns computed here rather than on the table as read, so that they scale and read well
in Data Docs: `item_known` (whether the row's item_id is in the accepted catalogue: a hash semi-join, counted
by an expectation on that boolean column, instead of a value set holding the whole catalogue inlined into the
suite, every result and every page) and `timestamp_utc` (the Unix seconds as UTC datetimes, so the bounds and
the offending values print as dates). Neither column leaves this module.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import ValidateParams
from components.errors import DataError

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

MIN_TIMESTAMP = 631152000  # 1990-01-01T00:00:00Z: older "interactions" are clock or unit errors
# What Data Docs shows: one data source, an asset and a suite per table, and the run's name.
DATA_SOURCE = "canonical_tables"
KNOWN_ITEM = "item_known"       # computed: item_id has an accepted catalogue entry
TIMESTAMP_UTC = "timestamp_utc"  # computed: timestamp as a UTC datetime
# pandas' datetime64[ns] spans about +-9.2e9 s; a value past it (milliseconds read as seconds) is pinned just
# inside, which is still far outside the bounds, so it fails the range check instead of becoming NaT (a null,
# which a range check skips).
_NS_EDGE_SECONDS = 9_000_000_000
ID_TYPES = ["str", "string", "object", "StringDtype", "string[python]"]
# GX 1.x mis-checks pandas' nullable Int64, so timestamps reach it as numpy int64, or float64 when some
# are missing (numpy ints cannot hold NaN); ingest has already floored every value to whole seconds.
TS_TYPES = ["int64", "float64"]


@dataclass
class Outcome:
    interactions: pd.DataFrame
    items: pd.DataFrame
    quarantine_interactions: pd.DataFrame
    quarantine_items: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)


def _context(docs_dir: Path | None):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ctx.data_sources.add_pandas(DATA_SOURCE)
    if docs_dir is not None:
        ctx.add_data_docs_site(site_name="reports", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
    return ctx


def _items_expectations() -> list[tuple[Any, str | None]]:
    """(expectation, quarantine reason). Reason None = schema-level: failing it fails the stage."""
    import great_expectations.expectations as gxe

    return [
        (gxe.ExpectColumnToExist(column="item_id"), None),
        (gxe.ExpectColumnToExist(column="title"), None),
        (gxe.ExpectColumnValuesToBeInTypeList(column="item_id", type_list=ID_TYPES), None),
        (gxe.ExpectColumnValuesToNotBeNull(column="item_id"), "item_id is missing"),
        (gxe.ExpectColumnValueLengthsToBeBetween(column="item_id", min_value=1), "item_id is empty"),
        (gxe.ExpectColumnValuesToBeUnique(column="item_id"), "duplicate item_id (the first entry is kept)"),
        (gxe.ExpectColumnValuesToNotBeNull(column="title"), "title is missing"),
        (gxe.ExpectColumnValueLengthsToBeBetween(column="title", min_value=1), "title is empty"),
    ]


def _interaction_expectations(n_items: int, max_ts: int) -> list[tuple[Any, str | None]]:
    """(expectation, quarantine reason) for the interactions table with its computed columns (`_with_checks`);
    `n_items`: the accepted catalogue's size, for the membership check's description."""
    import great_expectations.expectations as gxe

    cols = ["user_id", "item_id", "timestamp"]
    exps: list[tuple[Any, str | None]] = [(gxe.ExpectColumnToExist(column=c), None) for c in cols]
    exps += [
        (gxe.ExpectColumnValuesToBeInTypeList(column="user_id", type_list=ID_TYPES), None),
        (gxe.ExpectColumnValuesToBeInTypeList(column="item_id", type_list=ID_TYPES), None),
        (gxe.ExpectColumnValuesToBeInTypeList(column="timestamp", type_list=TS_TYPES), None),
    ]
    exps += [(gxe.ExpectColumnValuesToNotBeNull(column=c), f"{c} is missing") for c in ("user_id", "item_id")]
    exps += [(gxe.ExpectColumnValuesToNotBeNull(column="timestamp"), "timestamp is missing or unreadable")]
    exps += [(gxe.ExpectColumnValueLengthsToBeBetween(column=c, min_value=1), f"{c} is empty")
             for c in ("user_id", "item_id")]
    exps += [
        (gxe.ExpectColumnValuesToBeBetween(column=TIMESTAMP_UTC, min_value=_utc(MIN_TIMESTAMP),
                                           max_value=_utc(max_ts)),
         "timestamp before 1990 or in the future"),
        (gxe.ExpectCompoundColumnsToBeUnique(column_list=cols),
         "exact duplicate (user_id, item_id, timestamp) row (the first copy is kept)"),
        # A constant-size expectation whatever the catalogue's size: the join itself is done in `_with_checks`.
        (gxe.ExpectColumnValuesToBeInSet(
            column=KNOWN_ITEM, value_set=[True],
            description=f"item_id must have a catalogue entry with a non-empty title ({KNOWN_ITEM}: item_id "
                        f"joined against the {n_items:,} accepted catalogue items)"),
         "item_id has no catalogue entry with a non-empty title"),
    ]
    return exps


def _utc(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


def _with_checks(interactions: pd.DataFrame, known_items: pd.Series) -> pd.DataFrame:
    """`interactions` plus the computed columns its suite checks: `item_known` (bool: item_id is among
    `known_items`, a hash semi-join, O(rows + catalogue); None where item_id is missing) and `timestamp_utc` (datetime64[ns, UTC] of the Unix
    seconds; NaT where the timestamp is missing or not a number, which the not-null and type checks on
    `timestamp` report)."""
    seconds = pd.to_numeric(interactions["timestamp"], errors="coerce").astype("float64")
    item_id = interactions["item_id"].astype(object)
    # None where item_id is missing: GX skips nulls, so such a row gets "item_id is missing" alone, as before.
    known = item_id.isin(set(known_items.astype(str))).astype(object).where(item_id.notna(), None)
    return interactions.assign(**{
        KNOWN_ITEM: known,
        TIMESTAMP_UTC: pd.to_datetime(seconds.clip(-_NS_EDGE_SECONDS, _NS_EDGE_SECONDS), unit="s", utc=True),
    })


def _run_suite(ctx, name: str, df: pd.DataFrame, expectations, where: str, run_name: str):
    """Run one suite (`<name>_suite` on the asset `name`) through a GX Checkpoint, render its Data Docs
    page when the context has a site, and return (row reasons, failures by expectation)."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    bd = ctx.data_sources.get(DATA_SOURCE).add_dataframe_asset(name).add_batch_definition_whole_dataframe(f"{name}_batch")
    suite = ctx.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
    reasons: dict[str, str | None] = {}
    for exp, reason in expectations:
        suite.add_expectation(exp)
        reasons[_key(exp.expectation_type, exp.configuration.kwargs)] = reason
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"{name}_validation", data=bd, suite=suite))
    cp = ctx.checkpoints.add(gx.Checkpoint(name=f"{name}_checkpoint", validation_definitions=[vd],
                                           result_format={"result_format": "COMPLETE"}))
    result = cp.run(batch_parameters={"dataframe": _numpy_dtypes(df)},
                    run_id=RunIdentifier(run_name=run_name, run_time=dt.datetime.now(dt.UTC)))
    ((result_key, run),) = result.run_results.items()
    if ctx.list_data_docs_sites():
        _publish(ctx, result_key, run, name)

    flags = pd.DataFrame(index=df.index)
    counts: dict[str, int] = {}
    for r in run.results:
        cfg = r.expectation_config
        key = _key(cfg.type, cfg.kwargs)
        reason = reasons.get(key)
        if r.success:
            counts[key] = 0
            continue
        if reason is None or r.exception_info.get("raised_exception"):
            observed = r.result.get("observed_value")
            raise DataError(where, f"schema check failed: {key}" + (f", observed {observed}" if observed else ""),
                            "re-run the ingest stage; if the source is custom, give it the canonical columns "
                            "user_id, item_id, timestamp / item_id, title")
        idx = list(r.result.get("unexpected_index_list") or [])
        if cfg.type in ("expect_compound_columns_to_be_unique", "expect_column_values_to_be_unique"):
            idx = _later_copies(df, idx, cfg.kwargs.get("column_list") or [cfg.kwargs["column"]])
        counts[key] = len(idx)
        flags.loc[idx, reason] = True
    bad = flags.astype("boolean").fillna(False).astype(bool)
    row_reasons = bad.apply(lambda row: "; ".join(c for c in bad.columns if row[c]), axis=1) \
        if len(bad.columns) else pd.Series("", index=df.index)
    return row_reasons.astype(str), counts


def _publish(ctx, result_key, run, asset: str) -> None:
    """Render the run's Data Docs page (and the index) with the asset's name on it.

    GX's page header reads the asset from the result's batch spec, which only SQL and file assets fill in;
    a dataframe asset's page would say `Data asset: None`. So the result is stored again with the name
    added, then the page built from the store (what GX's UpdateDataDocsAction does, after the name)."""
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    run.meta.setdefault("batch_spec", {})["data_asset_name"] = asset
    ctx.validation_results_store.set(result_key, run)
    ctx.build_data_docs(resource_identifiers=[result_key, ExpectationSuiteIdentifier(name=run.suite_name)])


def _numpy_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.StringDtype):
            out[c] = out[c].astype(object).where(out[c].notna(), None)
        elif str(out[c].dtype) == "Int64":
            out[c] = out[c].astype("float64") if out[c].isna().any() else out[c].astype("int64")
    return out


def _key(etype: str, kwargs: dict) -> str:
    col = kwargs.get("column") or ",".join(kwargs.get("column_list") or [])
    return f"{etype}({col})"


def _later_copies(df: pd.DataFrame, idx: list, cols: list[str]) -> list:
    """GX flags every member of a duplicate group; keep the first occurrence and quarantine the rest."""
    sub = df.loc[idx, cols]
    return list(sub.index[sub.duplicated(keep="first")])


def validate(interactions: pd.DataFrame, items: pd.DataFrame, cfg: ValidateParams,
             docs_dir: Path | None = None, where: str = "data", run_name: str = "validate") -> Outcome:
    """Check both canonical tables (components/data/schema.py) and split their rows.

    `interactions` [N rows: user_id, item_id, timestamp (Unix seconds), _source, ...] and `items`
    [M rows: item_id, title, ...]; rows a reader could not parse carry `_error` (and `_raw`) and are
    quarantined as they are. Items are checked first; an interaction whose item failed is quarantined too.
    Returns the accepted rows, the quarantined rows with `reason`, and a summary (counts, `bad_fraction`,
    failures by expectation); it never raises for bad rows: the caller compares `bad_fraction` with
    `cfg.max_bad_fraction`. `docs_dir`: where GX writes Data Docs (HTML), or None for none; `run_name`: the
    run's name on those pages (and in their paths: no `/`).
    """
    ctx = _context(docs_dir)
    interactions = interactions.reset_index(drop=True)
    items = items.reset_index(drop=True)
    # Lines the reader could not parse (JSON Lines) are quarantined as they are, with their raw bytes;
    # the expectations check the rows that were read.
    unread_items, items = _split_unread(items)
    unread_inter, interactions = _split_unread(interactions)

    item_reasons, item_counts = _run_suite(ctx, "items", items, _items_expectations(), f"{where}/items.parquet",
                                           run_name)
    good_items = items[item_reasons == ""]
    max_ts = int(time.time()) + cfg.future_tolerance_seconds
    inter_reasons, inter_counts = _run_suite(
        ctx, "interactions", _with_checks(interactions, good_items["item_id"]),
        _interaction_expectations(good_items["item_id"].nunique(), max_ts),
        f"{where}/interactions.parquet", run_name,
    )
    good = interactions[inter_reasons == ""]
    q_inter = pd.concat([unread_inter, interactions[inter_reasons != ""].assign(reason=inter_reasons[inter_reasons != ""])],
                        ignore_index=True)
    q_items = pd.concat([unread_items, items[item_reasons != ""].assign(reason=item_reasons[item_reasons != ""])],
                        ignore_index=True)
    for q in (q_inter, q_items):
        if "_raw" in q.columns:  # bytes or None: Parquet's binary column has no NaN
            q["_raw"] = q["_raw"].astype(object).where(q["_raw"].notna(), None)
    if len(unread_inter):
        inter_counts["unreadable line"] = len(unread_inter)
    if len(unread_items):
        item_counts["unreadable line"] = len(unread_items)
    interactions = pd.concat([interactions, unread_inter], ignore_index=True)  # every row counts in the fraction

    n, nq = len(interactions), len(q_inter)
    summary = {
        "passed": True,
        "rows_checked": {"interactions": n, "items": len(items)},
        "rows_quarantined": {"interactions": nq, "items": len(q_items)},
        "bad_fraction": round(nq / n, 6) if n else 0.0,
        "max_bad_fraction": cfg.max_bad_fraction,
        "quarantined_by_expectation": {
            **{f"items.{k}": v for k, v in item_counts.items() if v},
            **{f"interactions.{k}": v for k, v in inter_counts.items() if v},
        },
        "users": int(good["user_id"].nunique()),
        "items": int(good_items["item_id"].nunique()),
        "interactions": len(good),
    }
    return Outcome(good.reset_index(drop=True), good_items.reset_index(drop=True),
                   q_inter.reset_index(drop=True), q_items.reset_index(drop=True), summary)


def _split_unread(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(unreadable lines with `reason`, readable rows without the `_error`/`_raw` columns)."""
    if "_error" not in df.columns:
        return df.iloc[:0].assign(reason=pd.Series(dtype=str)), df
    bad = df["_error"].notna()
    unread = df[bad].assign(reason=df.loc[bad, "_error"].astype(str)).drop(columns=["_error"])
    return unread, df[~bad].drop(columns=["_error", "_raw"]).reset_index(drop=True)
