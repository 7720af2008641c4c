"""Drift of a landed batch against the training data it joins: what changed, and whether to retrain on it.

The landing zone (components/data/landing.py) calls `judge` for every batch that passed validation, with
the batch's new rows and the store's interactions (the last ingest plus every batch accepted since), both
in the canonical schema: `user_id`, `item_id` (text), `timestamp` (Unix seconds). Each check is one number;
params `orchestration.drift` give it a `flag` and a `hold` threshold (null: off). A value at or above
`hold` holds the batch for review, at or above `flag` retrains and flags it, else it simply retrains. The
batch's decision is its worst check's.

| check | value | computed by |
| --- | --- | --- |
| item_popularity | normed Wasserstein distance of the popularity position of each row's item (below), on items both know | evidently `ValueDrift(method="wasserstein")` |
| sequence_length | normed Wasserstein distance (in reference standard deviations) of events per user | evidently `ValueDrift(method="wasserstein")` |
| inter_event_time | the same, of log10(1 + seconds) between a user's consecutive events | evidently `ValueDrift(method="wasserstein")` |
| new_items | share of the batch's rows on items with no interaction in the training data | pandas |
| new_users | share of the batch's users with no interaction in the training data | pandas |
| timestamp_overlap | share of the batch's rows older than the training data's newest event | pandas |
| timestamp_gap_days | days from the training data's newest event to the batch's oldest (negative: overlap) | pandas |

Why the split: evidently's drift tests compare two distributions of one column, which is what the first
three are, and its report draws them for people (`drift.html`). The other four are set memberships and
extremes of the batch against the training data: evidently 0.7 has no metric for "share of values absent
from the reference" (its out-of-list metrics take a fixed list, not millions of reference ids), and a
share is one line of pandas that a reader can check by hand.

How each distribution is made comparable:
- item_popularity: each row's item becomes its popularity position in the training data: the share of
  training interactions on more popular items plus half its own, 0 for the head, 1 for the tail. Over
  the training rows it is spread evenly, so a batch that favours the tail (a popularity flip), or piles
  onto a few items, moves away from that. New items are left out (new_items measures them). Not a
  categorical test on item ids: a distance between item frequencies grows as a batch gets smaller than
  the catalogue (a same-distribution batch of 1,200 rows over 400 items is as far as a flipped one), and
  evidently 0.7.23's categorical drift appends each missing category with its own `pd.concat`, quadratic
  in the catalogue's size (minutes for 100,000 items);
- sequence_length: a batch holds a slice of each user's history, so its per-user counts are compared
  with those of the training data's newest slice with as many rows, not with whole histories;
- inter_event_time: each batch event's gap looks back into the training data for the user's previous
  event, so a returning user's gap is as long as it really was; the reference is every gap in it.
A distribution check with fewer than `min_values` values on either side is skipped and recorded as such
(a distance between a few values says nothing), and so is every check of a batch with fewer rows than
that (a share of a handful of rows is an anecdote): such a batch retrains, its values kept in the report.

The report is written next to the batch: `drift.json` (for machines: per check its value, thresholds,
decision and what computed it; the overall decision and reasons; the library version) and `drift.html`
(for people: the same table, then evidently's report). The HTML is self-contained: evidently 0.7 inlines
its JavaScript bundle (3.5 MB) and its icon font (base64) and embeds the data; the only URL it holds that
a browser could fetch is plotly's `topojsonURL` (cdn.plot.ly), used by geographic maps, which this report
has none of, so it opens offline (checked in headless Chromium with every connection refused: the
table and all plots draw). Evidently is imported only when a distribution check runs (its import
costs several seconds), and its report sends nothing: its telemetry lives in its UI service alone.
"""

from __future__ import annotations

import html
import importlib.metadata
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from components.config import DriftParams, DriftThreshold

DRIFT_JSON, DRIFT_HTML = "drift.json", "drift.html"
DECISIONS = ("retrain", "flag", "hold")  # in rising order: a batch takes its worst check's (a skipped one: none)
CHECKS = ("item_popularity", "new_items", "new_users", "sequence_length", "inter_event_time",
          "timestamp_overlap", "timestamp_gap_days")
_DAY_S = 86_400
_COLUMNS = ["user_id", "item_id", "timestamp"]


@dataclass
class Drift:
    """One batch's drift report: `decision` (retrain | flag | hold), `reasons` (one per check over a
    threshold), `record` (drift.json) and `html` (drift.html)."""

    decision: str
    reasons: list[str]
    record: dict[str, Any]
    html: str = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """What batch.json, the landing log and the run record keep: decision, reasons, each check's value."""
        return {"decision": self.decision, "reasons": self.reasons,
                "values": {k: c["value"] for k, c in self.record.get("checks", {}).items()}}


def evidently_version() -> str | None:
    """The installed evidently's version, read without importing it."""
    try:
        return importlib.metadata.version("evidently")
    except importlib.metadata.PackageNotFoundError:
        return None


def _canonical(df: pd.DataFrame, what: str) -> pd.DataFrame:
    missing = [c for c in _COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks {missing}: pass the canonical user_id, item_id, timestamp columns")
    out = df[_COLUMNS].dropna()
    return pd.DataFrame({"user_id": out["user_id"].astype(str).to_numpy(),
                         "item_id": out["item_id"].astype(str).to_numpy(),
                         "timestamp": out["timestamp"].astype("int64").to_numpy()})


def _decide(value: float | None, t: DriftThreshold) -> str:
    if value is None:
        return "retrain"
    if t.hold is not None and value >= t.hold:
        return "hold"
    if t.flag is not None and value >= t.flag:
        return "flag"
    return "retrain"


def _gaps(events: pd.DataFrame) -> pd.Series:
    """Seconds from each event to the same user's previous one (first events have none), events in time order."""
    ordered = events.sort_values(["user_id", "timestamp"], kind="stable")
    gaps = ordered.groupby("user_id", sort=False)["timestamp"].diff()
    return gaps.dropna()


def _batch_gaps(batch: pd.DataFrame, reference: pd.DataFrame) -> pd.Series:
    """The gap before each batch event, looking back into the reference for a user's previous event.
    A back-dated event (before the user's last reference event) has no gap to measure here: left out."""
    last = reference.groupby("user_id")["timestamp"].max()
    seen = batch["user_id"].isin(last.index)
    prior = pd.DataFrame({"user_id": last.index[last.index.isin(batch["user_id"][seen])]})
    prior["timestamp"] = last.loc[prior["user_id"]].to_numpy()
    prior["_batch"] = False
    both = pd.concat([prior, batch.assign(_batch=True)], ignore_index=True)
    both = both.sort_values(["user_id", "timestamp", "_batch"], kind="stable")
    gaps = both.groupby("user_id", sort=False)["timestamp"].diff()
    return gaps[both["_batch"].to_numpy() & gaps.notna().to_numpy() & (gaps >= 0).to_numpy()]


def _popularity_position(counts: pd.Series) -> pd.Series:
    """item -> where its interactions sit in the training data's popularity ranking, 0 (the most popular
    item's) to 1 (the rarest's): the share of interactions on more popular items plus half its own.
    `counts`: interactions per item, most frequent first. Over the training data's own rows this position
    is spread evenly whatever the catalogue's size or skew, so the batch's rows are compared with that."""
    total = float(counts.sum())
    return (counts.cumsum() - counts / 2.0) / total


def _log_gap(seconds: pd.Series) -> np.ndarray:
    # Gaps span seconds to years: on a log scale the distance is not decided by the few longest ones.
    return np.log10(1.0 + seconds.to_numpy(dtype="float64"))


def judge(batch: pd.DataFrame, reference: pd.DataFrame, cfg: DriftParams, *, batch_id: str = "",
          html_report: bool = True) -> Drift:
    """Compare one batch with the training data it joins and decide: retrain, flag or hold.

    `batch`, `reference`: interactions with `user_id`, `item_id`, `timestamp` (Unix seconds); rows missing
    one are left out (validation quarantines them). Returns a Drift whose `record` is drift.json and `html`
    drift.html (empty with `html_report=False`). Raises ValueError when a frame lacks a column, or the batch
    has no complete row.
    """
    b, r = _canonical(batch, "the batch"), _canonical(reference, "the reference")
    if b.empty:
        raise ValueError("the batch has no complete (user_id, item_id, timestamp) row to judge")
    checks: dict[str, dict[str, Any]] = {}

    ref_items = r["item_id"].value_counts()
    new_item_rows = ~b["item_id"].isin(ref_items.index)
    checks["new_items"] = {"value": float(new_item_rows.mean()), "by": "pandas",
                           "detail": {"rows": int(new_item_rows.sum()),
                                      "distinct": int(b.loc[new_item_rows, "item_id"].nunique())}}
    users = pd.Index(b["user_id"].unique())
    new_users = ~users.isin(pd.Index(r["user_id"].unique()))
    checks["new_users"] = {"value": float(new_users.mean()), "by": "pandas",
                           "detail": {"users": len(users), "new": int(new_users.sum())}}
    if r.empty:
        checks["timestamp_overlap"] = {"value": None, "by": "pandas", "skipped": "no training data to compare with"}
        checks["timestamp_gap_days"] = {"value": None, "by": "pandas", "skipped": "no training data to compare with"}
    else:
        ref_max = int(r["timestamp"].max())
        checks["timestamp_overlap"] = {"value": float((b["timestamp"] < ref_max).mean()), "by": "pandas"}
        checks["timestamp_gap_days"] = {"value": (int(b["timestamp"].min()) - ref_max) / _DAY_S, "by": "pandas"}

    # The three distributions, as (reference sample, batch sample).
    position = _popularity_position(ref_items)
    slice_ = r.sort_values("timestamp", kind="stable").tail(len(b))
    samples = {
        "item_popularity": (r["item_id"].map(position), b.loc[~new_item_rows, "item_id"].map(position),
                            "popularity_position", "wasserstein"),
        "sequence_length": (slice_.groupby("user_id").size().astype("float64"),
                            b.groupby("user_id").size().astype("float64"), "events_per_user", "wasserstein"),
        "inter_event_time": (pd.Series(_log_gap(_gaps(r))), pd.Series(_log_gap(_batch_gaps(b, r))),
                             "log10_gap_s", "wasserstein"),
    }
    ready = {}
    for name, (ref_s, cur_s, column, method) in samples.items():
        detail = {"reference_values": int(len(ref_s)), "batch_values": int(len(cur_s)), "column": column}
        by = f"evidently ValueDrift(method={method!r})"
        if min(len(ref_s), len(cur_s)) < cfg.min_values:
            checks[name] = {"value": None, "by": by, "detail": detail,
                            "skipped": f"fewer than orchestration.drift.min_values={cfg.min_values} values on a side"}
        else:
            checks[name] = {"value": None, "by": by, "detail": detail}
            ready[name] = (ref_s, cur_s, column, method)
    snapshot = _evidently(ready, cfg) if ready else None
    if snapshot is not None:
        for name, value in snapshot[0].items():
            checks[name]["value"] = value

    if len(b) < cfg.min_values:  # a share of a handful of rows is an anecdote, not a shift
        for name in ("new_items", "new_users", "timestamp_overlap", "timestamp_gap_days"):
            checks[name].setdefault(
                "skipped", f"the batch has {len(b)} rows, fewer than orchestration.drift.min_values={cfg.min_values}")
    reasons, decision = [], "retrain"
    for name in CHECKS:
        c, t = checks[name], getattr(cfg, name)
        c |= {"flag": t.flag, "hold": t.hold, "decision": "skipped" if "skipped" in c else _decide(c["value"], t)}
        if c["decision"] not in ("retrain", "skipped"):
            limit = t.hold if c["decision"] == "hold" else t.flag
            reasons.append(f"{name} {c['value']:.3g} >= {c['decision']} {limit:g}")
            decision = max(decision, c["decision"], key=DECISIONS.index)
    record = {
        "batch_id": batch_id, "decision": decision, "reasons": reasons,
        "library": {"evidently": evidently_version()},
        "min_values": cfg.min_values,
        "batch": _extent(b), "reference": _extent(r),
        "checks": {name: checks[name] for name in CHECKS},
    }
    page = _page(record, snapshot[1] if snapshot is not None else None) if html_report else ""
    return Drift(decision, reasons, record, page)


def _extent(df: pd.DataFrame) -> dict[str, Any]:
    if df.empty:
        return {"rows": 0, "users": 0, "items": 0, "first_timestamp": None, "last_timestamp": None}
    return {"rows": len(df), "users": int(df["user_id"].nunique()), "items": int(df["item_id"].nunique()),
            "first_timestamp": int(df["timestamp"].min()), "last_timestamp": int(df["timestamp"].max())}


def _evidently(ready: dict[str, tuple], cfg: DriftParams) -> tuple[dict[str, float], Any]:
    """Run one evidently Report over the distribution checks; ({check: value}, the snapshot).

    Evidently compares two tables column by column and each column's drift test drops missing values
    (0.7.23 `get_one_column_drift`), so samples of different lengths (rows, users, gaps) ride in one table,
    padded with NaN, and one report holds them all."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    def table(side: int) -> pd.DataFrame:
        cols = {spec[2]: spec[side].reset_index(drop=True) for spec in ready.values()}
        n = max(len(s) for s in cols.values())
        return pd.DataFrame({c: s.reindex(range(n)) for c, s in cols.items()})

    definition = DataDefinition(numerical_columns=[spec[2] for spec in ready.values()])
    metrics = []
    for name, (_, _, column, method) in ready.items():
        t = getattr(cfg, name)
        # evidently's own "drift detected" line then agrees with this check's flag.
        threshold = t.flag if t.flag is not None else t.hold
        metrics.append(ValueDrift(column=column, method=method, threshold=threshold))
    snapshot = Report(metrics).run(Dataset.from_pandas(table(1), data_definition=definition),
                                   Dataset.from_pandas(table(0), data_definition=definition))
    values = [m.get("value") for m in snapshot.dict()["metrics"]]
    return {name: float(v) for name, v in zip(ready, values, strict=True)}, snapshot


def _page(record: dict[str, Any], snapshot: Any) -> str:
    """drift.html: the decision and every check in a plain table, then evidently's report (if one ran)."""
    esc = lambda v: html.escape("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    rows = "".join(
        f"<tr class='{esc(c['decision'])}'><td>{esc(name)}</td><td>{esc(c['value'])}</td><td>{esc(c['flag'])}</td>"
        f"<td>{esc(c['hold'])}</td><td><b>{esc(c['decision'])}</b></td><td>{esc(c['by'])}</td>"
        f"<td>{esc(c.get('skipped', ''))}</td></tr>" for name, c in record["checks"].items())
    b, r = record["batch"], record["reference"]
    reasons = "; ".join(record["reasons"]) or "every check below its thresholds"
    head = (
        "<section id='llmsrec-drift' style='font-family:sans-serif;margin:16px'>"
        "<style>#llmsrec-drift td,#llmsrec-drift th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "#llmsrec-drift table{border-collapse:collapse}#llmsrec-drift .flag{background:#fff3cd}"
        "#llmsrec-drift .hold{background:#f8d7da}</style>"
        f"<h1>Drift of batch {esc(record['batch_id'])}: {esc(record['decision']).upper()}</h1>"
        f"<p>{esc(reasons)}</p>"
        f"<p>Batch: {esc(b['rows'])} rows, {esc(b['users'])} users, {esc(b['items'])} items. "
        f"Training data it joins: {esc(r['rows'])} rows, {esc(r['users'])} users, {esc(r['items'])} items. "
        f"evidently {esc(record['library']['evidently'])}.</p>"
        "<table><tr><th>check</th><th>value</th><th>flag at</th><th>hold at</th><th>decision</th>"
        f"<th>computed by</th><th>note</th></tr>{rows}</table></section>")
    if snapshot is None:
        return f"<!DOCTYPE html><html lang='en'><head><meta charset='UTF-8'></head><body>{head}</body></html>\n"
    page = snapshot.get_html_str(as_iframe=False)
    at = page.find("<body>")
    if at < 0:  # another evidently template: the table goes first, the page still opens
        return head + page
    return page[:at + len("<body>")] + head + page[at + len("<body>"):]
