"""Great Expectations validation: quarantine with reasons, thresholds, reports; raw data untouched."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from components.config import ValidateParams
from components.data.validation import validate
from components.stages.ingest import main as ingest_main
from components.stages.validate import main as validate_main
from tests.browser import render

GOOD_ROWS = [(f"u{u}", f"I{i}", 1_600_000_000 + 3600 * (u * 10 + i)) for u in range(10) for i in range(6)]


def run_stages(tmp_path, inter_rows: list[str], max_bad: float = 0.1):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "interactions.tsv").write_text("user_id\titem_id\ttimestamp\n" + "".join(r + "\n" for r in inter_rows))
    (raw / "items.tsv").write_text("item_id\ttitle\n" + "".join(f"I{i}\tItem {i}\n" for i in range(6)))
    params = tmp_path / "params.yaml"
    params.write_text(f"seed: 1\ndata:\n  source: files\n  path: {raw}\nvalidate:\n  max_bad_fraction: {max_bad}\n")
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in raw.iterdir()}
    ingest_main(["--params", str(params), "--out", str(tmp_path / "ingested")])
    args = ["--params", str(params), "--in", str(tmp_path / "ingested"), "--out", str(tmp_path / "validated"),
            "--quarantine", str(tmp_path / "quarantine"), "--docs", str(tmp_path / "docs"),
            "--summary", str(tmp_path / "validation.json")]
    return raw, digest, args


def test_three_bad_rows_are_quarantined_with_reasons(tmp_path):
    rows = ["\t".join(map(str, r)) for r in GOOD_ROWS]
    bad = [
        "\tI1\t1600000000",  # no user id
        "u1\tI1\t4102444800",  # 2100-01-01: in the future
        rows[5],  # exact duplicate of a good row
    ]
    raw, digest, args = run_stages(tmp_path, rows + bad)
    validate_main(args)

    q = pd.read_parquet(tmp_path / "quarantine" / "interactions.parquet")
    assert len(q) == 3
    assert sorted(q["reason"]) == sorted([
        "user_id is missing",
        "timestamp before 1990 or in the future",
        "exact duplicate (user_id, item_id, timestamp) row (the first copy is kept)",
    ])
    assert sorted(q["_row"]) == [61, 62, 63]  # traceable to the raw file's records
    kept = pd.read_parquet(tmp_path / "validated" / "interactions.parquet")
    assert len(kept) == len(GOOD_ROWS)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in raw.iterdir()} == digest

    summary = json.loads((tmp_path / "validation.json").read_text())
    assert summary["passed"] and summary["rows_checked"]["interactions"] == 63
    assert summary["rows_quarantined"] == {"interactions": 3, "items": 0}
    assert summary["users"] == 10 and summary["items"] == 6
    assert sum(summary["quarantined_by_expectation"].values()) == 3
    assert (tmp_path / "docs" / "index.html").is_file()
    # The Data Docs page as a person sees it: named asset, suite and run; bounds and offending values as dates;
    # the membership check a counted join, with no catalogue inlined.
    (page,) = (tmp_path / "docs" / "validations" / "interactions_suite" / "validate").rglob("*.html")
    text = render(page, tmp_path / "chromium")["text"]
    assert "Expectation Suite: interactions_suite" in text and "Data asset: interactions" in text
    assert "Validations / interactions_suite / interactions / validate /" in text and "__none__" not in text
    assert "greater than or equal to 1990-01-01T00:00:00+00:00" in text and "631152000" not in text
    assert "2100-01-01T00:00:00+00:00" in text  # the row from the future, as a date
    assert "joined against the 6 accepted catalogue items" in text and "I3 I4" not in text


def test_too_many_bad_rows_fail_the_stage_but_leave_evidence(tmp_path, capsys):
    rows = ["\t".join(map(str, r)) for r in GOOD_ROWS[:20]] + [f"u{i}\tI_unknown\t1600000000" for i in range(5)]
    _, _, args = run_stages(tmp_path, rows, max_bad=0.1)
    with pytest.raises(SystemExit):
        validate_main(args)
    err = capsys.readouterr().err
    assert "5 of 25 interaction rows (20.0%) failed validation" in err
    assert "validate.max_bad_fraction" in err
    assert len(pd.read_parquet(tmp_path / "quarantine" / "interactions.parquet")) == 5
    assert not (tmp_path / "validated").exists()  # nothing half-good is handed downstream
    assert json.loads((tmp_path / "validation.json").read_text())["passed"] is False


def test_millisecond_timestamps_get_a_hint(tmp_path, capsys):
    rows = [f"{u}\t{i}\t{ts * 1000}" for u, i, ts in GOOD_ROWS]
    _, _, args = run_stages(tmp_path, rows)
    with pytest.raises(SystemExit):
        validate_main(args)
    assert "data.timestamp_unit: ms" in capsys.readouterr().err


def test_items_without_title_quarantine_their_interactions():
    inter = pd.DataFrame({"user_id": ["u", "u", "v", "w"], "item_id": ["A", "B", "B", None],
                          "timestamp": pd.array([1.6e9, 1.6e9 + 1, 1.6e9, 1.6e9], dtype="Int64"),
                          "_source": "t", "_row": [1, 2, 3, 4]})
    items = pd.DataFrame({"item_id": ["A", "B", "A"], "title": ["Alpha", "", "Again"], "description": "",
                          "_source": "t", "_row": [1, 2, 3]})
    out = validate(inter, items, ValidateParams(max_bad_fraction=1.0))
    assert out.items["item_id"].tolist() == ["A"] and out.items["title"].tolist() == ["Alpha"]
    assert sorted(out.quarantine_items["reason"]) == ["duplicate item_id (the first entry is kept)", "title is empty"]
    assert out.interactions["item_id"].tolist() == ["A"]
    # Counted by the catalogue join; a missing item_id is reported as missing, not also as unknown.
    assert out.quarantine_interactions["reason"].tolist() == ["item_id has no catalogue entry with a non-empty title"] * 2 \
        + ["item_id is missing"]
    assert out.summary["quarantined_by_expectation"]["interactions.expect_column_values_to_be_in_set(item_known)"] == 2


def test_schema_level_failure_names_the_file():
    from components.errors import DataError

    inter = pd.DataFrame({"user_id": ["u"], "item_id": ["A"], "timestamp": ["yesterday"], "_source": "t", "_row": [1]})
    items = pd.DataFrame({"item_id": ["A"], "title": ["Alpha"], "description": "", "_source": "t", "_row": [1]})
    with pytest.raises(DataError, match=r"data/interactions.parquet: schema check failed: .*\(timestamp\)"):
        validate(inter, items, ValidateParams())


def test_whitespace_only_ids_count_as_empty():
    from components.data.schema import canonical_interactions

    raw = pd.DataFrame({"user_id": ["u", "   "], "item_id": ["A", "A"], "timestamp": ["1600000000", "1600000001"]})
    inter = canonical_interactions(raw, "t")
    items = pd.DataFrame({"item_id": ["A"], "title": ["Alpha"], "description": "", "_source": "t", "_row": [1]})
    out = validate(inter, items, ValidateParams(max_bad_fraction=1.0))
    assert out.quarantine_interactions["reason"].tolist() == ["user_id is empty"]
    assert out.interactions["user_id"].tolist() == ["u"]
