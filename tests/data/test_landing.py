"""The landing zone: complete files only, atomic moves, de-duplication by content and by row, rejection
with evidence, nothing lost on a full disk, one run at a time."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components.config import parse_params
from components.data import landing
from components.data.batches import accepted_batches, merge_batches, read_batch
from components.data.landing import Paths, drop, is_candidate, land, main
from components.errors import DataError
from tests.data.conftest import fill

PARAMS = parse_params({"validate": {"max_bad_fraction": 0.05}})
REPO = Path(__file__).resolve().parents[2]
QUIET = lambda _: None  # noqa: E731


@pytest.fixture
def paths(tmp_path):
    return Paths(incoming=tmp_path / "incoming", store=tmp_path / "batches", landing=tmp_path / "landing")


@pytest.fixture
def ingested(tmp_path):
    """A known catalogue, as the last ingest left it."""
    d = tmp_path / "ingested"
    d.mkdir()
    pd.DataFrame({"item_id": ["A", "B", "C"], "title": ["Apple", "Banana", "Cherry"], "description": "",
                  "_source": "base/items.tsv"}).to_parquet(d / "items.parquet")
    pd.DataFrame({"user_id": ["b1", "b1", "b2"], "item_id": ["A", "B", "C"], "timestamp": [1_700_000_000 + k for k in range(3)],
                  "_source": "base/interactions.tsv"}).to_parquet(d / "interactions.parquet")
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
    assert (rdir / "raw" / "bad.csv").read_bytes() == raw and rec["path"] == str(rdir / "raw" / "bad.csv")
    q = pd.read_parquet(rdir / "quarantine.parquet")
    assert sorted(q["item_id"]) == ["GHOST1", "GHOST1", "GHOST2", "GHOST2"]
    assert q["reason"].str.contains("no catalogue entry").all() and q["_source"].str.endswith("bad.csv").all()
    # The same bad bytes again: judged anew (the catalogue may have grown), still rejected, no second copy.
    (paths.incoming / "bad_again.csv").write_bytes(raw)
    again = land(paths, PARAMS, ingested=ingested, log=lambda _: None)
    assert again.rejected[0]["reason"].startswith("still: ") and again.rejected[0]["of"] == rec["batch_id"]
    assert len(list(paths.rejected.iterdir())) == 1 and not list(paths.claimed.iterdir())


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


# --- helpers for the kinds below (issue 23) ---------------------------------------------------------


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kept_bytes(paths: Paths) -> set[str]:
    """SHA-256 of every regular file the landing zone keeps (store and landing folders): where a
    producer's bytes must still be found."""
    return {digest(Path(d) / f) for root in (paths.store, paths.landing) if root.is_dir()
            for d, _, files in os.walk(root) for f in files if not os.path.islink(Path(d) / f)}


def links_under(*roots: Path) -> list[str]:
    return [str(Path(d) / n) for r in roots if r.is_dir() for d, dirs, files in os.walk(r)
            for n in dirs + files if os.path.islink(Path(d) / n)]


def params_file(tmp_path: Path, paths: Paths) -> Path:
    """A params.yaml whose landing zone is `paths`, for the CLI (as the DAG and an operator run it)."""
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"validate": {"max_bad_fraction": 0.05}, "orchestration": {"landing": {
        "incoming": str(paths.incoming), "store": str(paths.store), "landing": str(paths.landing),
        "settle_seconds": 0}}}))
    return p


@pytest.mark.parametrize("good", [True, False], ids=["accepted", "rejected"])
def test_a_disk_that_fills_while_placing_leaves_the_batch_claimable(tmp_path, ingested, small_fs, capsys, good):
    """Issue 23, item 1: everything on one small filesystem; it fills after the claim, while the batch's
    folder is written. The batch stays in claimed/, `list` shows it, the CLI fails saying so (not as a
    data error: the DAG retries), and once space is back the next run lands it, bytes unchanged."""
    root = small_fs(tmp_path / "zone")
    paths = Paths(incoming=root / "incoming", store=root / "batches", landing=root / "landing")
    paths.incoming.mkdir()
    rows = batch() if good else pd.concat([batch(users=1), batch(users=2, items=("GHOST",))])
    rows.to_csv(paths.incoming / "b.csv", index=False)
    raw = (paths.incoming / "b.csv").read_bytes()
    filler = fill(root)

    with pytest.raises(SystemExit) as e:
        main(["--params", str(params_file(tmp_path, paths)), "ingest", "--ingested", str(ingested)])
    err = capsys.readouterr().err
    assert e.value.code == 3 and "ERROR [landing]" not in err and "b.csv" in err and "No space left" in err, err
    (left,) = paths.claimed.iterdir()
    assert left.read_bytes() == raw and not any(paths.store.glob("*")) and not any(paths.rejected.glob("*"))
    assert any("pending" in line and "b.csv" in line for line in landing.list_lines(paths))

    filler.unlink()
    result = land(paths, PARAMS, ingested=ingested, log=QUIET)
    (rec,) = result.accepted if good else result.rejected
    assert Path(rec["path"]).read_bytes() == raw and rec["file"] == "b.csv"
    assert not list(paths.claimed.iterdir()) and accepted_batches(paths.store) == ([Path(rec["path"])] if good else [])


def test_a_full_store_on_another_filesystem_leaves_the_batch_claimable(tmp_path, paths, ingested, small_fs):
    """Item 1, across filesystems: the store is its own small disk, full; the raw file is copied, not
    moved, so ENOSPC mid-copy leaves it claimed, with no half-written batch in the store."""
    small_fs(paths.store)
    paths.incoming.mkdir(parents=True)
    batch().to_csv(paths.incoming / "b.csv", index=False)
    raw = (paths.incoming / "b.csv").read_bytes()
    filler = fill(paths.store)
    first = land(paths, PARAMS, ingested=ingested, log=QUIET)
    assert not first.accepted and [f["file"] for f in first.failed] == ["b.csv"]
    assert "No space left" in first.failed[0]["error"]
    assert [p.name for p in paths.store.iterdir()] == ["filler"]  # no hidden half-batch either
    assert [p.read_bytes() for p in paths.claimed.iterdir()] == [raw]
    assert json.loads(paths.log.read_text().splitlines()[-1])["event"] == "failed"

    filler.unlink()
    (rec,) = land(paths, PARAMS, ingested=ingested, log=QUIET).accepted
    stored = Path(rec["path"])
    assert stored.read_bytes() == raw and os.stat(stored).st_nlink == 1 and not list(paths.claimed.iterdir())


def test_rows_already_in_the_store_are_dropped_and_counted(tmp_path, paths, ingested):
    """Item 2: yesterday's rows re-sent as JSON Lines after the CSV add nothing (kept aside, counted);
    a batch mixing old and new rows is accepted with the old ones counted, and `ingest`'s merge appends
    each row once, so `validate` never meets them as duplicates."""
    src = tmp_path / "day1.csv"
    batch().to_csv(src, index=False)
    drop([src], paths)
    land(paths, PARAMS, ingested=ingested, log=QUIET)

    resent = tmp_path / "day1.jsonl"
    batch().to_json(resent, orient="records", lines=True)
    mixed = tmp_path / "day2.csv"
    base_row = pd.DataFrame({"user_id": ["b1"], "item_id": ["A"], "timestamp": [1_700_000_000]})  # in the base source
    pd.concat([batch(users=6), base_row]).to_csv(mixed, index=False)
    drop([resent], paths)
    os.utime(paths.incoming / "day1.jsonl", (1, 1))  # arrives first
    drop([mixed], paths)
    result = land(paths, PARAMS, ingested=ingested, log=QUIET)

    (dup,) = result.duplicates
    assert dup["file"] == "day1.jsonl" and dup["rows_already_in_store"] == dup["rows"] == 12
    assert Path(dup["path"]).read_bytes() == resent.read_bytes()  # kept, outside the store
    (acc,) = result.accepted
    assert acc["file"] == "day2.csv" and acc["rows"] == 19 and acc["rows_already_in_store"] == 13
    assert json.loads((Path(acc["path"]).parent / "batch.json").read_text())["rows_already_in_store"] == 13
    assert [p.name for p in accepted_batches(paths.store)] == ["day1.csv", "day2.csv"]

    base = pd.read_parquet(ingested / "interactions.parquet")
    items = pd.read_parquet(ingested / "items.parquet")
    dropped: dict[str, int] = {}
    inter, _ = merge_batches(base, items, accepted_batches(paths.store), dropped=dropped)
    assert len(inter) == 3 + 12 + 6 and not inter.duplicated(["user_id", "item_id", "timestamp"]).any()
    assert sorted(dropped.values()) == [0, 13]


def test_a_batch_is_retracted_with_one_recorded_command(tmp_path, paths, ingested, capsys):
    """Item 2: `retract BATCH_ID --reason` takes a batch out of the store, bytes kept, recorded in
    retraction.json, log.jsonl and `list`; the same bytes re-sent stay out; its rows may come back
    in a corrected file."""
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    batch().to_csv(a, index=False)
    batch(users=2, t0=1_736_000_000).to_csv(b, index=False)
    drop([a], paths)
    first = land(paths, PARAMS, ingested=ingested, log=QUIET).accepted[0]
    drop([b], paths)
    land(paths, PARAMS, ingested=ingested, log=QUIET)
    params = str(params_file(tmp_path, paths))

    main(["--params", params, "retract", first["batch_id"], "--reason", "wrong export from the shop"])
    assert [p.name for p in accepted_batches(paths.store)] == ["b.csv"]
    kept = paths.landing / "retracted" / first["batch_id"]
    assert (kept / "a.csv").read_bytes() == a.read_bytes()
    record = json.loads((kept / "retraction.json").read_text())
    assert record["retraction_reason"] == "wrong export from the shop" and record["retracted_by"]
    event = json.loads(paths.log.read_text().splitlines()[-1])
    assert event["event"] == "retracted" and event["batch_id"] == first["batch_id"]
    capsys.readouterr()
    main(["--params", params, "list"])
    assert f"{first['batch_id']}  retracted" in capsys.readouterr().out

    with pytest.raises(SystemExit):
        main(["--params", params, "retract", "no-such-batch", "--reason", "x"])
    assert "is not an accepted batch" in capsys.readouterr().err

    drop([a], paths)
    again = land(paths, PARAMS, ingested=ingested, log=QUIET)
    assert "identical to retracted batch" in again.rejected[0]["reason"]
    fixed = tmp_path / "a_fixed.jsonl"
    batch().to_json(fixed, orient="records", lines=True)
    drop([fixed], paths)
    (back,) = land(paths, PARAMS, ingested=ingested, log=QUIET).accepted
    assert back["rows_already_in_store"] == 0


def test_a_symlinked_batch_is_refused_and_its_target_never_touched(tmp_path, paths, ingested):
    """Item 3: the store holds bytes it owns. A link in incoming/ is refused, saying how to drop the
    file itself; the producer's file keeps its bytes and mode; no link is left anywhere."""
    target = tmp_path / "producer" / "mine.csv"
    target.parent.mkdir()
    batch().to_csv(target, index=False)
    os.chmod(target, 0o644)
    before = target.read_bytes()
    paths.incoming.mkdir(parents=True)
    os.symlink(target, paths.incoming / "b.csv")
    batch(users=2, t0=1_736_000_000).to_csv(paths.incoming / "c.csv", index=False)
    result = land(paths, PARAMS, ingested=ingested, log=QUIET)
    (rej,) = result.rejected
    assert rej["file"] == "b.csv" and "symbolic link" in rej["reason"] and "srec land drop" in rej["fix"]
    assert [r["file"] for r in result.accepted] == ["c.csv"]
    assert target.read_bytes() == before and stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert not links_under(paths.incoming, paths.store, paths.landing)


def test_a_hard_linked_batch_is_copied_into_bytes_the_store_owns(tmp_path, paths, ingested):
    """Item 3, the sibling: a hard link is a regular file sharing the producer's inode. The store gets
    its own copy: the producer's mode is not changed, and the producer's later edits change nothing."""
    target = tmp_path / "mine.csv"
    batch().to_csv(target, index=False)
    os.chmod(target, 0o644)
    paths.incoming.mkdir(parents=True)
    os.link(target, paths.incoming / "b.csv")
    (rec,) = land(paths, PARAMS, ingested=ingested, log=QUIET).accepted
    stored = Path(rec["path"])
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644 and os.stat(target).st_nlink == 1
    assert os.stat(stored).st_ino != os.stat(target).st_ino
    target.write_text("user_id,item_id,timestamp\nu1,A,1\n")
    assert digest(stored) == rec["sha256"]


def test_a_file_name_that_is_not_utf8_is_rejected_and_the_queue_goes_on(tmp_path, paths, ingested, capsys):
    """Item 4: `caf\\xe9-latin1.csv` is rejected with a message naming it (printable), its bytes kept;
    the good batch behind it is accepted in the same run, and the next run does not stumble on it."""
    paths.incoming.mkdir(parents=True)
    bad = paths.incoming / os.fsdecode(b"caf\xe9-latin1.csv")
    batch().to_csv(bad, index=False)
    raw = bad.read_bytes()
    os.utime(bad, (1, 1))  # first in the queue
    batch(users=2, t0=1_736_000_000).to_csv(paths.incoming / "next.csv", index=False)
    params = str(params_file(tmp_path, paths))
    with pytest.raises(SystemExit) as e:
        main(["--params", params, "ingest", "--ingested", str(ingested)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "caf\\xe9-latin1.csv" in err and "not valid UTF-8" in err and "rename" in err, err
    assert [p.name for p in accepted_batches(paths.store)] == ["next.csv"]
    (rdir,) = paths.rejected.iterdir()
    assert (rdir / "raw" / "caf\\xe9-latin1.csv").read_bytes() == raw
    assert not list(paths.claimed.iterdir()) and not list(paths.incoming.glob("*.csv"))
    main(["--params", params, "ingest", "--ingested", str(ingested)])
    assert "nothing new" in capsys.readouterr().out


def test_batches_are_judged_in_arrival_order_against_the_catalogue_as_it_stands(paths, ingested):
    """Item 5: the second batch of a run uses an item that the first brings; both are accepted, and
    the store lists them in arrival order."""
    paths.incoming.mkdir(parents=True)
    batch(users=3, items=("A", "N1"), title="Nectarine").to_csv(paths.incoming / "z_first.csv", index=False)
    batch(users=3, items=("N1", "B"), t0=1_736_000_000).to_csv(paths.incoming / "a_second.csv", index=False)
    os.utime(paths.incoming / "z_first.csv", (1, 1))
    result = land(paths, PARAMS, ingested=ingested, log=QUIET)
    assert not result.rejected, result.rejected
    assert [p.name for p in accepted_batches(paths.store)] == ["z_first.csv", "a_second.csv"]


def test_a_rejection_is_judged_anew_once_its_reason_is_gone(tmp_path, paths, ingested):
    """Item 5: rejected for an unknown item; once a batch brings the item, the same bytes re-sent are
    accepted instead of refused forever as identical to a rejected batch."""
    late, brings = tmp_path / "late.csv", tmp_path / "brings.csv"
    batch(users=3, items=("N2", "A")).to_csv(late, index=False)
    batch(users=2, items=("N2",), t0=1_736_000_000, title="Nashi pear").to_csv(brings, index=False)
    drop([late], paths)
    assert "in_set(item_known)" in land(paths, PARAMS, ingested=ingested, log=QUIET).rejected[0]["reason"]
    drop([brings], paths)
    assert land(paths, PARAMS, ingested=ingested, log=QUIET).accepted
    drop([late], paths)
    (rec,) = land(paths, PARAMS, ingested=ingested, log=QUIET).accepted
    assert rec["file"] == "late.csv" and Path(rec["path"]).read_bytes() == late.read_bytes()


def test_following_the_fix_message_loses_no_bytes(tmp_path, paths, ingested):
    """Item 6: the operator fixes `quarantine.parquet` and drops it; still bad, it is rejected again.
    Its raw bytes are kept (not overwritten by the new quarantine, not deleted as a 'duplicate')."""
    bad = tmp_path / "bad.csv"
    pd.concat([batch(users=2), batch(users=2, items=("GHOST1", "GHOST2"))]).to_csv(bad, index=False)
    drop([bad], paths)
    (rec,) = land(paths, PARAMS, ingested=ingested, log=QUIET).rejected
    work = tmp_path / "work"
    work.mkdir()
    q = pd.read_parquet(paths.rejected / rec["batch_id"] / "quarantine.parquet")
    q.loc[q["item_id"] == "GHOST1", "item_id"] = "A"  # half fixed: GHOST2 still unknown
    q.to_parquet(work / "quarantine.parquet")
    mine = digest(work / "quarantine.parquet")
    drop([work / "quarantine.parquet"], paths)
    (again,) = land(paths, PARAMS, ingested=ingested, log=QUIET).rejected
    land(paths, PARAMS, ingested=ingested, log=QUIET)  # the next run

    assert {mine, digest(bad)} <= kept_bytes(paths) and not list(paths.claimed.iterdir())
    kept = paths.rejected / again["batch_id"]
    assert digest(kept / "raw" / "quarantine.parquet") == mine and Path(again["path"]) == kept / "raw" / "quarantine.parquet"
    assert "reason" in pd.read_parquet(kept / "quarantine.parquet").columns  # the new quarantine, beside it


def test_drop_never_replaces_a_waiting_file_nor_takes_a_name_that_is_never_landed(tmp_path, paths):
    """Siblings of item 6: a second `drop` of the same name before the landing run used to replace the
    first file's bytes; a name starting with '_' used to wait in incoming/ forever."""
    one, two = tmp_path / "one" / "b.csv", tmp_path / "two" / "b.csv"
    for f, users in ((one, 2), (two, 3)):
        f.parent.mkdir()
        batch(users=users).to_csv(f, index=False)
    drop([one], paths)
    with pytest.raises(DataError, match="already waiting"):
        drop([two], paths)
    assert (paths.incoming / "b.csv").read_bytes() == one.read_bytes()
    hidden = tmp_path / "_b.csv"
    hidden.write_bytes(one.read_bytes())
    with pytest.raises(DataError, match="would never take"):
        drop([hidden], paths)
    assert sorted(p.name for p in paths.incoming.iterdir()) == ["_READY", "b.csv"]


def test_two_landing_runs_at_once_never_take_the_same_file(tmp_path, paths, ingested):
    """Item 9: two real processes. The second starts once the first has claimed its files (the window
    in which it used to take them as 'left by a crashed run'); it waits for the lock, then finds
    nothing. Every batch is accepted exactly once and both exit 0."""
    paths.incoming.mkdir(parents=True)
    for k in range(8):
        batch(users=2, t0=1_736_000_000 + k * 10_000).to_csv(paths.incoming / f"b{k}.csv", index=False)
    params = str(params_file(tmp_path, paths))
    env = {**os.environ, "GX_ANALYTICS_ENABLED": "False", "DVC_NO_ANALYTICS": "1"}

    def start(n: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "components.data.landing", "--params", params, "ingest",
                                 "--ingested", str(ingested), "--record", str(tmp_path / f"run{n}.json")],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = start(1)
    deadline = time.monotonic() + 120
    while not (paths.claimed.is_dir() and any(paths.claimed.iterdir())):  # readiness: the first has claimed
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
        time.sleep(0.05)
    second = start(2)
    outs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    records = [json.loads((tmp_path / f"run{n}.json").read_text()) for n in (1, 2)]
    taken = sorted(r["file"] for rec in records for r in rec["accepted"] + rec["duplicates"])
    assert taken == sorted(f"b{k}.csv" for k in range(8)), outs
    assert len(accepted_batches(paths.store)) == 8 and not list(paths.claimed.iterdir())


def test_what_a_killed_run_leaves_half_done_is_undone_by_the_next(tmp_path, paths, ingested):
    """Sibling of item 1 (a kill -9 instead of ENOSPC): a half-filled hidden batch folder is removed and
    its file, still claimed, is landed once; a retraction killed after its first rename is undone, so
    the batch is still accepted, bytes unchanged."""
    a = tmp_path / "a.csv"
    batch().to_csv(a, index=False)
    drop([a], paths)
    (rec,) = land(paths, PARAMS, ingested=ingested, log=QUIET).accepted
    os.rename(paths.store / rec["batch_id"], paths.store / f".retracting-{rec['batch_id']}")  # retract's first step
    paths.claimed.mkdir(parents=True, exist_ok=True)
    claimed = paths.claimed / "00000000000000000001.abcdef-b.csv"
    batch(users=2, t0=1_736_000_000).to_csv(claimed, index=False)
    half = paths.store / ".placing-20250101T000000.000000Z-0123456789ab-abcdef"  # _place's hidden folder
    half.mkdir()
    os.link(claimed, half / "b.csv")

    (b,) = land(paths, PARAMS, ingested=ingested, log=QUIET).accepted
    assert b["file"] == "b.csv" and not half.exists() and not list(paths.claimed.iterdir())
    assert [p.name for p in accepted_batches(paths.store)] == ["a.csv", "b.csv"]
    assert digest(paths.store / rec["batch_id"] / "a.csv") == digest(a)
    assert not [p for p in paths.store.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("damage", [b'{"batch_id": "x", "sha', b"\xff\xfe garbage", b"[1, 2]", b"[" * 5000 + b"]" * 5000])
def test_a_damaged_batch_record_stops_the_run_with_its_name_and_loses_nothing(tmp_path, paths, ingested, damage):
    """A batch.json damaged in the store (truncated, overwritten, nested past the parser's depth) is named
    with the fix, as a DataError, before anything is claimed: the waiting file stays in incoming/."""
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    batch().to_csv(a, index=False)
    batch(users=2, t0=1_736_000_000).to_csv(b, index=False)
    drop([a], paths)
    first = land(paths, PARAMS, ingested=ingested, log=QUIET).accepted[0]
    record = paths.store / first["batch_id"] / "batch.json"
    record.chmod(0o644)
    record.write_bytes(damage)
    drop([b], paths)
    with pytest.raises(DataError) as e:
        land(paths, PARAMS, ingested=ingested, log=QUIET)
    assert str(record) in str(e.value) and "damaged batch record" in str(e.value) and "dvc checkout" in str(e.value)
    assert (paths.incoming / "b.csv").read_bytes() == b.read_bytes()
    assert (paths.store / first["batch_id"] / "a.csv").read_bytes() == a.read_bytes()
