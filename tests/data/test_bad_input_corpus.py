"""The bad-input corpus: one small raw source per kind of fault that real files contain, and its outcome.

Each folder in `tests/data/bad_inputs/` is a raw source (the `files` source, or Amazon 2023 JSON Lines)
plus `expect.yaml`:

- `error`: the stage (`ingest` or `validate`) fails with one clear line naming the file and the problem
  (`says`) and a fix, and leaves no validated output;
- `quarantined`: those rows are quarantined with the reason (and, for an unreadable line, its bytes);
- `accepted`: what comes out of validation (counts, ids, titles, timestamps).

For every case the raw files are byte-identical afterwards, and a real model store with an LLM-SRec
package in production (tests/conftest.py `promoted_home`) is untouched, pointer included. Parquet
cases are written by the generators below (`generate:`), so that the corpus holds no binary files.

The `landing_*` folders are faults met by the landing zone (components/data/landing.py): a base source
(`base/`), batch files, and `landing:` in expect.yaml, a list of landing runs. Each run first `put`s files
into `incoming/` in order (`drop`, the CLI, by default; `how: link` or `hardlink`, as a producer might;
`as: NAME` renames the copy to NAME encoded as Latin-1), or follows a rejection's fix message
(`fix_quarantine`), or retracts a batch (`retract`), optionally with the landing zone's disk full
(`full_disk`, a real tmpfs) or two landing runs at once (`concurrent`); then checks the run's record
(`accepted`, `duplicates`, `failed`, `rejected`, `rows_already_in_store`) and exit code. Afterwards
nothing is lost: the raw files keep their bytes and modes, the bytes of every file put are kept in the
landing zone, nothing is left claimed, `ingest` + `validate` pass with no quarantined row (`validated`),
and the production model is untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components.data.landing import Paths
from components.data.landing import main as landing_main
from components.serving.registry import production_tag
from components.stages.ingest import main as ingest_main
from components.stages.validate import main as validate_main
from tests.data.conftest import fill

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "expect.yaml").is_file())
LANDING_CASES = [c for c in CASES if "landing" in yaml.safe_load((CORPUS / c / "expect.yaml").read_text())]
SOURCE_CASES = [c for c in CASES if c not in LANDING_CASES]
REPO = Path(__file__).resolve().parents[2]


def fractional_item_ids(path: Path) -> None:
    pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": [1.0, 2.5, 1.0],
                  "timestamp": [1600000000, 1600000001, 1600000002]}).to_parquet(path)


def int_ids_with_null(path: Path) -> None:
    """An int64 column with one null: pandas reads it back as float64, 7 as 7.0."""
    users = [f"u{u}" for u in range(1, 4) for _ in range(4)] + ["u9"]
    items = pd.array([7, 8, 9, 10] * 3 + [None], dtype="Int64")
    pd.DataFrame({"user_id": users, "item_id": items,
                  "timestamp": [1600000000 + k for k in range(13)]}).to_parquet(path)


def naive_ms_timestamps(path: Path) -> None:
    stamps = pd.to_datetime([1600000000 + k for k in range(4)], unit="s").astype("datetime64[ms]")
    pd.DataFrame({"user_id": "u1", "item_id": list("ABCD"), "timestamp": stamps}).to_parquet(path)


def tz_aware_ns_timestamps(path: Path) -> None:
    stamps = pd.to_datetime([1600000000 + k for k in range(4)], unit="s", utc=True).tz_convert("Europe/Berlin")
    pd.DataFrame({"user_id": "u1", "item_id": list("ABCD"), "timestamp": stamps}).to_parquet(path)


GENERATORS = {f.__name__: f for f in (fractional_item_ids, int_ids_with_null, naive_ms_timestamps,
                                       tz_aware_ns_timestamps)}


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def production_store(promoted_home, monkeypatch_module):
    """A real model store with the fixture LLM-SRec package in production, as the stages would see it."""
    from components.serving.registry import production_tag

    monkeypatch_module.setenv("BENTOML_HOME", str(promoted_home))
    assert production_tag(promoted_home)
    return promoted_home


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.parametrize("case", SOURCE_CASES)
def test_bad_input_case(case, tmp_path, production_store, capsys):
    expect = yaml.safe_load((CORPUS / case / "expect.yaml").read_text())
    raw = tmp_path / "raw"
    shutil.copytree(CORPUS / case, raw, ignore=shutil.ignore_patterns("expect.yaml"))
    for name, generator in (expect.get("generate") or {}).items():
        GENERATORS[generator](raw / name)
    raw_before, store_before = tree_digest(raw), tree_digest(production_store)
    tag = production_tag(production_store)

    params = expect.get("params") or {}
    data = {"source": "files", "path": str(raw), **(expect.get("data") or {})}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seed": 1, "data": data, "validate": {}, **params}))
    out = tmp_path / "data"
    stages = {
        "ingest": lambda: ingest_main(["--params", str(tmp_path / "params.yaml"), "--out", str(out / "ingested")]),
        "validate": lambda: validate_main(["--params", str(tmp_path / "params.yaml"), "--in", str(out / "ingested"),
                                           "--out", str(out / "validated"), "--quarantine", str(out / "quarantine"),
                                           "--docs", str(tmp_path / "docs"), "--summary", str(tmp_path / "v.json")]),
    }
    error = expect.get("error")
    for name, run in stages.items():
        if error and error["stage"] == name:
            with pytest.raises(SystemExit) as e:
                run()
            assert e.value.code == 1
            err = capsys.readouterr().err
            assert err.startswith(f"ERROR [{name}]") and "Traceback" not in err, err
            assert str(raw / error["file"]) in err and error["says"] in err and "Fix:" in err, err
            assert not (out / "validated").exists()
            break
        run()
    else:
        assert not error
        check_outputs(expect, out)
    assert tree_digest(raw) == raw_before, "a raw file was modified"
    assert tree_digest(production_store) == store_before, "the model store or its production pointer changed"
    assert production_tag(production_store) == tag


def check_outputs(expect: dict, out: Path) -> None:
    inter = pd.read_parquet(out / "validated" / "interactions.parquet")
    items = pd.read_parquet(out / "validated" / "items.parquet")
    q_inter = pd.read_parquet(out / "quarantine" / "interactions.parquet")
    q_items = pd.read_parquet(out / "quarantine" / "items.parquet")
    q = expect.get("quarantined") or {}
    assert len(q_inter) == q.get("interactions", 0), q_inter
    assert len(q_items) == q.get("items", 0), q_items
    for key, frame in (("reason", q_inter if len(q_inter) else q_items), ("item_reason", q_items)):
        if key in q:  # every quarantined row gives one of the expected reasons, and each reason occurs
            wanted = q[key] if isinstance(q[key], list) else [q[key]]
            reasons = list(frame["reason"])
            assert reasons and all(any(w in r for w in wanted) for r in reasons), reasons
            assert all(any(w in r for r in reasons) for w in wanted), reasons
    if "raw" in q:  # the unreadable line's bytes, kept exactly
        assert q_inter["_raw"].dropna().tolist() == [q["raw"].encode()]
    a = expect.get("accepted") or {}
    if "interactions" in a:
        assert len(inter) == a["interactions"]
    if "items" in a:
        assert len(items) == a["items"]
    for key, col, frame in (("user_ids", "user_id", inter), ("item_ids", "item_id", inter)):
        if key in a:
            assert sorted(frame[col].unique()) == sorted(map(str, a[key]))
    if "titles" in a:
        titles = items.set_index("item_id")["title"]
        assert {k: titles[k] for k in a["titles"]} == a["titles"]
    if "timestamps" in a:
        assert inter.sort_values("_row")["timestamp"].tolist() == a["timestamps"]
    if "min_timestamp" in a:
        assert inter["timestamp"].min() == a["min_timestamp"]
    assert len(CASES) >= 30  # README counts the kinds (tests/data/bad_inputs/): a lost folder must not pass quietly


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """(SHA-256, permission bits) of every file: a chmod through a link changes the raw tree too."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(p.lstat().st_mode))
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def kept_bytes(paths: Paths) -> set[str]:
    return {hashlib.sha256((Path(d) / f).read_bytes()).hexdigest() for root in (paths.store, paths.landing)
            if root.is_dir() for d, _, files in os.walk(root) for f in files if not os.path.islink(Path(d) / f)}


@pytest.mark.parametrize("case", LANDING_CASES)
def test_landing_case(case, tmp_path, production_store, small_fs, capsys):
    expect = yaml.safe_load((CORPUS / case / "expect.yaml").read_text())
    raw = tmp_path / "raw"
    shutil.copytree(CORPUS / case, raw, ignore=shutil.ignore_patterns("expect.yaml"))
    raw_before, store_before = tree_state(raw), tree_digest(production_store)
    tag = production_tag(production_store)
    runs = expect["landing"]
    zone = tmp_path / "zone"
    if any(r.get("full_disk") for r in runs):
        small_fs(zone, "16m")
    paths = Paths(incoming=zone / "incoming", store=zone / "batches", landing=zone / "landing")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 1, "data": {"source": "files", "path": str(raw / "base")},
                                      **(expect.get("params") or {}), "orchestration": {"landing": {
                                          "incoming": str(paths.incoming), "store": str(paths.store),
                                          "landing": str(paths.landing), "settle_seconds": 0}}}))
    cli, out = ["--params", str(params)], tmp_path / "data"

    def ingest() -> None:
        ingest_main([*cli, "--out", str(out / "ingested"), "--batches", str(paths.store)])

    ingest()  # the catalogue, as the last pipeline run left it
    put_bytes: set[str] = set()
    accepted_ids: dict[str, str] = {}
    for n, run in enumerate(runs):
        for k, item in enumerate(run.get("put") or []):
            put_bytes |= put(item, raw, paths, cli, mtime=1_000_000 + 100 * n + k)
        if "fix_quarantine" in run:
            put_bytes.add(follow_fix(run["fix_quarantine"], paths, cli, tmp_path / f"work{n}"))
        if "retract" in run:
            landing_main([*cli, "retract", accepted_ids[run["retract"]], "--reason", f"corpus case {case}"])
        filler = fill(zone) if run.get("full_disk") else None
        capsys.readouterr()
        code, record = land_runs(cli, out / "ingested", tmp_path / f"landing{n}", run.get("concurrent", 1))
        err = capsys.readouterr().err if run.get("concurrent", 1) == 1 else record.pop("output")
        if filler is not None:
            filler.unlink()
        check_run(run, code, record, err)
        accepted_ids |= {r["file"]: r["batch_id"] for r in record["accepted"]}

    assert not paths.claimed.is_dir() or not list(paths.claimed.iterdir()), "a batch was left claimed"
    assert put_bytes <= kept_bytes(paths), "the bytes of a file put into the landing zone were lost"
    assert tree_state(raw) == raw_before, "a raw file was modified (bytes or mode)"
    ingest()
    validate_main([*cli, "--in", str(out / "ingested"), "--out", str(out / "validated"), "--quarantine",
                   str(out / "quarantine"), "--docs", str(tmp_path / "docs"), "--summary", str(tmp_path / "v.json")])
    assert len(pd.read_parquet(out / "quarantine" / "interactions.parquet")) == 0
    assert len(pd.read_parquet(out / "validated" / "interactions.parquet")) == expect["validated"]["interactions"]
    assert tree_digest(production_store) == store_before, "the model store or its production pointer changed"
    assert production_tag(production_store) == tag


def put(item: str | dict, raw: Path, paths: Paths, cli: list[str], mtime: int) -> set[str]:
    """Put one file into incoming/ as the case says; returns the SHA-256 of the bytes put (none for a link)."""
    spec = {"file": item} if isinstance(item, str) else item
    src = raw / spec["file"]
    how = spec.get("how", "write" if "as" in spec else "drop")
    paths.incoming.mkdir(parents=True, exist_ok=True)
    dest = paths.incoming / src.name
    if how == "drop":
        landing_main([*cli, "drop", str(src)])
    elif how == "link":
        os.symlink(src, dest)
    elif how == "hardlink":
        os.link(src, dest)
    else:  # a producer writing a hidden copy and renaming it into place, under a name that is not UTF-8
        dest = paths.incoming / os.fsdecode(spec["as"].encode("latin-1"))
        shutil.copyfile(src, paths.incoming / f".{src.name}.part")
        os.rename(paths.incoming / f".{src.name}.part", dest)
    os.utime(dest, (mtime, mtime), follow_symlinks=False)  # arrival order: the order of `put`
    return set() if how == "link" else {hashlib.sha256(src.read_bytes()).hexdigest()}


def follow_fix(spec: dict, paths: Paths, cli: list[str], work: Path) -> str:
    """What the rejection's fix message asks: fix the rows of quarantine.parquet, drop the file."""
    (rdir,) = [d for d in paths.rejected.iterdir() if json.loads((d / "rejection.json").read_text())["file"]
               == spec["of"]]
    q = pd.read_parquet(rdir / "quarantine.parquet")
    q["item_id"] = q["item_id"].replace(spec["replace"])
    work.mkdir()
    q.to_parquet(work / "quarantine.parquet")
    landing_main([*cli, "drop", str(work / "quarantine.parquet")])
    return hashlib.sha256((work / "quarantine.parquet").read_bytes()).hexdigest()


def land_runs(cli: list[str], ingested: Path, record: Path, concurrent: int) -> tuple[int, dict]:
    """One landing run in this process, or `concurrent` real processes, each started once the one
    before has claimed its files. Returns (exit code, the runs' records merged)."""
    args = ["ingest", "--ingested", str(ingested)]
    if concurrent == 1:
        try:
            landing_main([*cli, *args, "--record", str(record.with_suffix(".json"))])
            code = 0
        except SystemExit as e:
            code = e.code
        return code, json.loads(record.with_suffix(".json").read_text())
    claimed = Path(yaml.safe_load(Path(cli[1]).read_text())["orchestration"]["landing"]["landing"]) / "claimed"
    env = {**os.environ, "GX_ANALYTICS_ENABLED": "False", "DVC_NO_ANALYTICS": "1"}
    procs = []
    for k in range(concurrent):
        procs.append(subprocess.Popen([sys.executable, "-m", "components.data.landing", *cli, *args, "--record",
                                       str(record.with_suffix(f".{k}.json"))], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        deadline = time.monotonic() + 120
        while k < concurrent - 1 and not (claimed.is_dir() and any(claimed.iterdir())):
            assert procs[-1].poll() is None and time.monotonic() < deadline, procs[-1].communicate()[0]
            time.sleep(0.05)
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    merged: dict = {"output": "\n".join(outputs)}
    for k in range(concurrent):
        for key, values in json.loads(record.with_suffix(f".{k}.json").read_text()).items():
            merged.setdefault(key, []).extend(values)
    return max(p.returncode for p in procs), merged


def check_run(run: dict, code: int, record: dict, err: str) -> None:
    assert code == run.get("exit", 0), err
    for key in ("accepted", "duplicates", "failed"):
        assert sorted(r["file"] for r in record.get(key, [])) == sorted(run.get(key) or []), (key, record)
    want = run.get("rejected")
    if want:
        assert any(r["file"] == want["file"] and want["says"] in r["reason"] for r in record["rejected"]), record
    else:
        assert not record["rejected"], record["rejected"]
    if code == 1:
        assert "ERROR [landing]" in err and want["says"] in err and "Fix:" in err and "Traceback" not in err, err
    for name, n in (run.get("rows_already_in_store") or {}).items():
        (rec,) = [r for r in record["accepted"] + record["duplicates"] if r["file"] == name]
        assert rec["rows_already_in_store"] == n, rec
