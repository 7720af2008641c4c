"""Drift on every batch (issue 26, part 1): a batch from the training data's own distribution retrains, a
shifted one (new items, a popularity flip) is flagged or held, a held batch is never lost and one command
releases it into the store, where the next `ingest` reads it.

The data is the embedded synthetic default split by time, as batches arrive: the first 90% is the base
source (`files`, as an operator's export would be), the last 10% lands. The real landing zone, the real
Great Expectations suite and evidently run in-process; evidently is imported once per session."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from components.config import DriftParams, load_params, parse_params
from components.data import drift as drift_mod
from components.data.batches import accepted_batches
from components.data.drift import DRIFT_HTML, DRIFT_JSON, judge
from components.data.landing import Paths, drop, land, list_lines, main
from components.data.sources.synthetic import generate
from components.errors import ConfigError
from components.orchestration.release import summary_lines
from components.stages.ingest import main as ingest_main
from components.stages.ingest_batches import log_drift_events

QUIET = lambda _: None  # noqa: E731


@pytest.fixture(scope="module")
def split() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(base interactions: the first 90% by time, the last 10%, the catalogue) of the synthetic default."""
    inter, items = generate(parse_params({}).data.synthetic, seed=42)
    inter = inter.sort_values("timestamp", kind="stable").reset_index(drop=True)
    cut = int(len(inter) * 0.9)
    return inter.iloc[:cut], inter.iloc[cut:].reset_index(drop=True), items


@pytest.fixture
def zone(tmp_path, split):
    """A landing zone whose base source is the first 90%, ingested once as the pipeline would; returns
    (paths, params file, the ingest output folder, a function that runs `ingest` again)."""
    base, _, items = split
    (tmp_path / "base").mkdir()
    base.to_csv(tmp_path / "base" / "interactions.tsv", sep="\t", index=False)
    items[["item_id", "title"]].to_csv(tmp_path / "base" / "items.tsv", sep="\t", index=False)
    paths = Paths(incoming=tmp_path / "incoming", store=tmp_path / "batches", landing=tmp_path / "landing")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"source": "files", "path": str(tmp_path / "base")},
                                      "validate": {"max_bad_fraction": 0.05},
                                      "orchestration": {"landing": {
                                          "incoming": str(paths.incoming), "store": str(paths.store),
                                          "landing": str(paths.landing), "settle_seconds": 0}}}))
    ingested = tmp_path / "ingested"

    def ingest() -> pd.DataFrame:
        ingest_main(["--params", str(params), "--out", str(ingested), "--batches", str(paths.store)])
        return pd.read_parquet(ingested / "interactions.parquet")

    ingest()
    return paths, params, ingested, ingest


def shifted(base: pd.DataFrame, batch: pd.DataFrame, new_share: float = 0.3) -> pd.DataFrame:
    """The batch with its popularity flipped (the k-th most popular item of the base becomes the k-th least)
    and `new_share` of its rows moved to 20 new, titled items."""
    order = base["item_id"].value_counts().index.tolist()
    flip = dict(zip(order, order[::-1], strict=True))
    out = batch.assign(item_id=batch["item_id"].map(lambda i: flip.get(i, i)), title="")
    new = np.random.default_rng(0).random(len(out)) < new_share
    ids = [f"NEW{k:02d}" for k in np.arange(new.sum()) % 20]
    out.loc[new, "item_id"] = ids
    out.loc[new, "title"] = [f"A brand new release, no. {i[3:]}" for i in ids]
    return out


def test_a_batch_from_the_same_distribution_retrains(tmp_path, split, zone):
    _, recent, _ = split
    paths, _, ingested, _ = zone
    src = tmp_path / "recent.csv"
    recent.to_csv(src, index=False)
    drop([src], paths)
    result = land(paths, load_params(zone[1]), ingested=ingested, log=QUIET)
    (rec,) = result.accepted
    assert rec["drift"]["decision"] == "retrain", rec["drift"]
    folder = paths.store / rec["batch_id"]
    report = json.loads((folder / DRIFT_JSON).read_text())
    assert report["decision"] == "retrain" and report["library"]["evidently"] == "0.7.23"
    checks = report["checks"]
    assert set(checks) == set(drift_mod.CHECKS) and not any("skipped" in c for c in checks.values())
    assert all(c["decision"] == "retrain" and c["value"] is not None for c in checks.values()), checks
    assert checks["item_popularity"]["by"].startswith("evidently") and checks["new_items"]["by"] == "pandas"
    assert checks["new_items"]["value"] == 0.0 and checks["timestamp_overlap"]["value"] == 0.0
    assert json.loads((folder / "batch.json").read_text())["drift"]["decision"] == "retrain"
    page = (folder / DRIFT_HTML).read_text()
    # For people, offline: the decision table, then evidently's drawing code and data, all inline.
    assert "Drift of batch" in page and "RETRAIN" in page and "popularity_position" in page
    assert "window.drawDashboard" in page and len(page) > 1_000_000
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?https?:", page), "the report loads a URL"
    assert accepted_batches(paths.store) == [folder / "recent.csv"]


def test_a_shifted_batch_is_held_not_lost_and_released_into_the_store(tmp_path, split, zone, monkeypatch, capsys):
    base, recent, _ = split
    paths, params, ingested, ingest = zone
    src = tmp_path / "shifted.csv"
    shifted(base, recent).to_csv(src, index=False)
    drop([src], paths)
    result = land(paths, load_params(params), ingested=ingested, log=QUIET)
    assert not result.accepted and not result.rejected
    (held,) = result.held
    drift = held["drift"]
    assert drift["decision"] == "hold", drift
    assert drift["values"]["item_popularity"] >= 0.6 and 0.25 < drift["values"]["new_items"] < 0.35, drift
    assert any(r.startswith("item_popularity") and "hold" in r for r in drift["reasons"])
    assert any(r.startswith("new_items") and "flag" in r for r in drift["reasons"])

    # Not lost, not trained on: the bytes whole and read-only in held/, the report beside them, listed.
    folder = paths.held / held["batch_id"]
    assert (folder / "shifted.csv").read_bytes() == src.read_bytes()
    assert not (folder / "shifted.csv").stat().st_mode & 0o222
    assert json.loads((folder / DRIFT_JSON).read_text())["decision"] == "hold"
    assert accepted_batches(paths.store) == [] and not (paths.store / held["batch_id"]).exists()
    (line,) = [x for x in list_lines(paths) if held["batch_id"] in x]
    assert " held " in line and f"release {held['batch_id']} --reason" in line
    assert json.loads(paths.log.read_text().splitlines()[-1])["event"] == "held"

    # The same bytes again: a duplicate of the held batch, which stays held.
    drop([src], paths)
    again = land(paths, load_params(params), ingested=ingested, log=QUIET)
    assert [d["of"] for d in again.duplicates] == [held["batch_id"]] and not again.held and not again.accepted
    assert (folder / "shifted.csv").is_file()
    # A release that died after taking it out of held/ and before the store copy was complete: the next
    # run under the lock puts it back, still held.
    folder.rename(paths.held / f".releasing-{held['batch_id']}")
    land(paths, load_params(params), ingested=ingested, log=QUIET)
    assert (folder / "shifted.csv").read_bytes() == src.read_bytes() and accepted_batches(paths.store) == []

    # Recorded where an operator looks: the DAG's run summary and the registry's events.
    lines = summary_lines({"run_id": "r", "outcome": "unchanged", "reason": "-", "landing": result.as_dict()})
    assert "batches: 0 accepted, 1 held, 0 duplicate, 0 rejected" in lines
    assert "drift: 1 hold" in lines and any(x.startswith(f"  hold shifted.csv ({held['batch_id']})") for x in lines)
    said: list[str] = []
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "no-bentoml-yet"))
    assert log_drift_events(result.as_dict(), log=said.append) == 0 and "no BentoML home" in said[0]
    (tmp_path / "bentoml").mkdir()
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    assert log_drift_events(result.as_dict(), log=said.append) == 1
    events = json.loads((tmp_path / "bentoml" / "registry" / "llmsrec.json").read_text())["events"]
    assert [(e["action"], e["tag"]) for e in events] == [("drift_hold", None)]
    assert held["batch_id"] in events[0]["reason"] and "item_popularity" in events[0]["reason"]

    # One command releases it: into the store as accepted, the drift decision kept, the release recorded.
    capsys.readouterr()
    main(["--params", str(params), "release", held["batch_id"], "--reason", "a catalogue relaunch, as planned"])
    assert "released held batch" in capsys.readouterr().out
    stored = paths.store / held["batch_id"]
    assert accepted_batches(paths.store) == [stored / "shifted.csv"] and not folder.exists()
    assert (stored / "shifted.csv").read_bytes() == src.read_bytes()
    meta = json.loads((stored / "batch.json").read_text())
    assert meta["status"] == "accepted" and meta["drift"]["decision"] == "hold"
    assert meta["release_reason"] == "a catalogue relaunch, as planned" and meta["released_by"]
    assert (stored / DRIFT_HTML).stat().st_size > 1_000_000
    assert json.loads(paths.log.read_text().splitlines()[-1])["event"] == "released"
    with pytest.raises(SystemExit):
        main(["--params", str(params), "release", held["batch_id"], "--reason", "again"])
    assert "is not a batch held for review" in capsys.readouterr().err

    # The next ingest trains on it.
    rows = ingest()
    from_batch = rows[rows["_source"].astype(str) == str(stored / "shifted.csv")]
    assert len(from_batch) == len(recent)


def test_new_items_alone_flag_and_a_tiny_batch_is_not_judged(split):
    """Judged directly (no landing): half the rows on new items is flagged, not held; a batch of a few rows
    keeps its values but decides nothing."""
    base, recent, _ = split
    cfg = DriftParams()
    half_new = shifted(base, recent, new_share=0.5).assign(item_id=lambda d: np.where(
        d["title"] != "", d["item_id"], recent["item_id"]))
    d = judge(half_new, base, cfg, html_report=False)
    assert d.decision == "flag" and [r.split()[0] for r in d.reasons] == ["new_items"], d.reasons
    assert d.record["checks"]["new_items"]["detail"]["distinct"] == 20
    tiny = judge(recent.head(cfg.min_values - 1).assign(item_id="NEW"), base, cfg, html_report=False)
    assert tiny.decision == "retrain" and tiny.record["checks"]["new_items"]["value"] == 1.0
    assert all(c["decision"] == "skipped" for c in tiny.record["checks"].values())
    assert "<table>" in judge(recent.head(5), base, cfg).html  # no evidently report to show: the table alone


def test_a_bad_drift_threshold_is_a_config_error_naming_the_key(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("orchestration:\n  drift:\n    item_popularity: {flag: 0.7, hold: 0.5}\n")
    with pytest.raises(ConfigError) as e:
        load_params(p)
    assert "orchestration.drift.item_popularity.hold: 0.5 is below flag 0.7" in str(e.value)
    assert "set hold >= flag" in str(e.value)
    p.write_text("orchestration:\n  drift:\n    new_items: {flag: 1.0e+9}\n")
    with pytest.raises(ConfigError, match=r"orchestration.drift.new_items.flag = 1000000000.0: input should be "
                                          r"less than or equal to 1000000"):
        load_params(p)
    # One threshold given: the other keeps its default (null is how a threshold is switched off).
    p.write_text("orchestration:\n  drift:\n    new_items: {hold: 0.95}\n    new_users: {flag: null}\n")
    drift = load_params(p).orchestration.drift
    assert (drift.new_items.flag, drift.new_items.hold, drift.new_users.flag) == (0.2, 0.95, None)
