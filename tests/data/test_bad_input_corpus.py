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
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components.serving.registry import production_tag
from components.stages.ingest import main as ingest_main
from components.stages.validate import main as validate_main

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "expect.yaml").is_file())


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


@pytest.mark.parametrize("case", CASES)
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
