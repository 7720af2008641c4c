"""The landing zone: complete files only, atomic moves, de-duplication by content, rejection with evidence."""

from __future__ import annotations

import json
import os
import stat

import pandas as pd
import pytest

from components.config import parse_params
from components.data.batches import accepted_batches, merge_batches, read_batch
from components.data.landing import Paths, drop, is_candidate, land

PARAMS = parse_params({"validate": {"max_bad_fraction": 0.05}})


@pytest.fixture
def paths(tmp_path):
    return Paths(incoming=tmp_path / "incoming", store=tmp_path / "batches", landing=tmp_path / "landing")


@pytest.fixture
def ingested(tmp_path):
    """A known catalogue, as the last ingest left it."""
    d = tmp_path / "ingested"
    d.mkdir()
    pd.DataFrame({"item_id": ["A", "B", "C"], "title": ["Apple", "Banana", "Cherry"], "description": ""}) \
        .to_parquet(d / "items.parquet")
    return d


def batch(users=4, items=("A", "B", "C"), t0=1_735_000_000, **extra) -> pd.DataFrame:
    rows = [{"user_id": f"u{u}", "item_id": i, "timestamp": t0 + u * 100 + k, **extra}
            for u in range(users) for k, i in enumerate(items)]
    return pd.DataFrame(rows)


def test_only_complete_files_are_taken(paths, ingested):
    paths.incoming.mkdir(parents=True)
    batch().to_csv(paths.incoming / "done.csv", index=False)
    batch().to_csv(paths.incoming / ".writing.csv.part", index=False)
    (paths.incoming / "still.csv.part").write_text("user_id,item_id\n")
    (paths.incoming / "_READY").touch()
    result = land(paths, PARAMS, ingested=ingested, log=lambda _: None)
    assert [r["file"] for r in result.accepted] == ["done.csv"]
    assert sorted(p.name for p in paths.incoming.iterdir()) == [".writing.csv.part", "_READY", "still.csv.part"]
    assert not is_candidate(paths.incoming / "_READY")


def test_accepted_batch_is_stored_read_only_with_its_hash(paths, ingested):
    drop_file = paths.incoming.parent / "b.csv"
    batch().to_csv(drop_file, index=False)
    drop([drop_file], paths)
    assert (paths.incoming / paths.ready_file).exists()  # the sentinel the Asset watcher consumes
    result = land(paths, PARAMS, ingested=ingested, log=lambda _: None)
    (rec,) = result.accepted
    stored = paths.store / rec["batch_id"] / "b.csv"
    assert stored.read_bytes() == drop_file.read_bytes()
    assert not os.stat(stored).st_mode & stat.S_IWUSR
    meta = json.loads((paths.store / rec["batch_id"] / "batch.json").read_text())
    assert meta["sha256"] == rec["sha256"] and meta["rows"] == 12 and meta["bad_rows"] == 0
    assert accepted_batches(paths.store) == [stored]
    assert [json.loads(x)["event"] for x in paths.log.read_text().splitlines()] == ["accepted"]


def test_same_bytes_twice_are_dropped_as_duplicate(paths, ingested):
    src = paths.incoming.parent / "b.csv"
    batch().to_csv(src, index=False)
    drop([src], paths)
    first = land(paths, PARAMS, ingested=ingested, log=lambda _: None)
    (paths.incoming / "b_copy.csv").write_bytes(src.read_bytes())
    second = land(paths, PARAMS, ingested=ingested, log=lambda _: None)
    assert not second.accepted and [d["of"] for d in second.duplicates] == [first.accepted[0]["batch_id"]]
    assert len(accepted_batches(paths.store)) == 1 and not list(paths.incoming.glob("*.csv"))


def test_a_bad_batch_is_rejected_with_its_rows_quarantined_and_raw_bytes_kept(paths, ingested):
    paths.incoming.mkdir(parents=True)
    bad = pd.concat([batch(users=2), batch(users=2, items=("GHOST1", "GHOST2"))], ignore_index=True)
    bad.to_csv(paths.incoming / "bad.csv", index=False)
    raw = (paths.incoming / "bad.csv").read_bytes()
    result = land(paths, PARAMS, ingested=ingested, log=lambda _: None)
    (rec,) = result.rejected
    assert not result.accepted and accepted_batches(paths.store) == []
    assert "failed validation" in rec["reason"] and "quarantine.parquet" in rec["fix"]
    rdir = paths.rejected / rec["batch_id"]
    assert (rdir / "bad.csv").read_bytes() == raw
    q = pd.read_parquet(rdir / "quarantine.parquet")
    assert sorted(q["item_id"]) == ["GHOST1", "GHOST1", "GHOST2", "GHOST2"]
    assert q["reason"].str.contains("no catalogue entry").all() and q["_source"].str.endswith("bad.csv").all()
    # The same bad bytes again: still rejected, without a second copy.
    (paths.incoming / "bad_again.csv").write_bytes(raw)
    again = land(paths, PARAMS, ingested=ingested, log=lambda _: None)
    assert "identical to rejected batch" in again.rejected[0]["reason"]
    assert len(list(paths.rejected.iterdir())) == 1


def test_unreadable_and_unsupported_files_are_rejected_with_the_fix(paths, ingested):
    paths.incoming.mkdir(parents=True)
    (paths.incoming / "wrong.csv").write_text("user,item,when\nu1,A,1735000000\n")
    (paths.incoming / "sheet.xlsx").write_bytes(b"PK\x03\x04")
    result = land(paths, PARAMS, ingested=ingested, log=lambda _: None)
    reasons = {r["file"]: r["reason"] for r in result.rejected}
    assert "missing column" in reasons["wrong.csv"] and "unsupported file type" in reasons["sheet.xlsx"]


def test_a_claim_left_by_a_crashed_run_is_finished(paths, ingested):
    paths.claimed.mkdir(parents=True)
    batch().to_csv(paths.claimed / "1234abcd-late.csv", index=False)
    result = land(paths, PARAMS, ingested=ingested, log=lambda _: None)
    assert [r["file"] for r in result.accepted] == ["late.csv"] and not list(paths.claimed.iterdir())


def test_new_items_come_from_titled_rows_and_never_retitle_known_ones(tmp_path):
    f = tmp_path / "b.jsonl"
    rows = [{"user_id": "u1", "item_id": "A", "timestamp": 1_735_000_000, "title": "Renamed apple"},
            {"user_id": "u1", "item_id": "N1", "timestamp": 1_735_000_100, "title": "Nectarine"},
            {"user_id": "u2", "item_id": "N1", "timestamp": 1_735_000_200, "title": "Nectarine"},
            {"user_id": "u2", "item_id": 7, "timestamp": "1735000300", "title": None}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    inter, items = read_batch(f)
    assert list(inter["item_id"]) == ["A", "N1", "N1", "7"] and inter["timestamp"].tolist()[-1] == 1_735_000_300
    base_items = pd.DataFrame({"item_id": ["A"], "title": ["Apple"], "description": [""], "_source": "s", "_row": 1})
    base_inter = inter.iloc[:0]
    _, merged = merge_batches(base_inter, base_items, [f])
    assert merged.set_index("item_id")["title"].to_dict() == {"A": "Apple", "N1": "Nectarine"}


def test_bad_jsonl_line_becomes_a_row_naming_the_line(tmp_path):
    f = tmp_path / "b.jsonl"
    f.write_text('{"user_id": "u1", "item_id": "A", "timestamp": 1}\n{not json\n')
    inter, _ = read_batch(f)
    assert inter["_error"].tolist()[1].startswith("line 2 is not valid JSON") and inter["_raw"].tolist()[1] == b"{not json"
