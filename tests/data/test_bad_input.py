"""Bad input gets an error that names the file, the problem and the fix; raw files are never touched."""

from __future__ import annotations

import pandas as pd
import pytest

from components.config import DataParams, parse_params
from components.data.sources import load_source
from components.errors import ConfigError, DataError
from components.stages.ingest import main as ingest_main

GOOD_ITEMS = "item_id\ttitle\nA\tAlpha\nB\tBeta\n"


def files_cfg(d):
    return DataParams(source="files", path=str(d))


def write(d, inter: str | bytes, items: str = GOOD_ITEMS, ext: str = "tsv"):
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"interactions.{ext}"
    p.write_bytes(inter if isinstance(inter, bytes) else inter.encode())
    (d / "items.tsv").write_text(items)
    return p


def check(err: pytest.ExceptionInfo, path, problem: str):
    msg = str(err.value)
    assert str(path) in msg, msg
    assert problem in msg, msg
    assert "Fix:" in msg and len(err.value.fix) > 10, msg


def test_missing_file(tmp_path):
    (tmp_path / "items.tsv").write_text(GOOD_ITEMS)
    with pytest.raises(DataError) as e:
        load_source(files_cfg(tmp_path), 0, tmp_path)
    check(e, tmp_path / "interactions.*", "file not found")


def test_missing_directory(tmp_path):
    with pytest.raises(DataError) as e:
        load_source(files_cfg(tmp_path / "nope"), 0, tmp_path)
    check(e, tmp_path / "nope", "directory not found")


def test_unreadable_parquet(tmp_path):
    p = write(tmp_path, b"PAR1 this is not parquet", ext="parquet")
    with pytest.raises(DataError) as e:
        load_source(files_cfg(tmp_path), 0, tmp_path)
    check(e, p, "not a readable Parquet file")


def test_not_utf8(tmp_path):
    p = write(tmp_path, b"user_id\titem_id\ttimestamp\nu\tA\t1\n" + "é\tB\t2\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        load_source(files_cfg(tmp_path), 0, tmp_path)
    check(e, p, "not UTF-8")


def test_wrong_delimiter(tmp_path):
    p = write(tmp_path, "user_id,item_id,timestamp\nu1,A,1600000000\n")
    with pytest.raises(DataError) as e:
        load_source(files_cfg(tmp_path), 0, tmp_path)
    check(e, p, "looks comma-separated")


def test_missing_column_names_mapping_fix(tmp_path):
    p = write(tmp_path, "user_id\tmovie\ttimestamp\nu1\tA\t1600000000\n")
    with pytest.raises(DataError) as e:
        load_source(files_cfg(tmp_path), 0, tmp_path)
    check(e, p, "missing column(s) ['item_id']")
    assert "data.columns" in e.value.fix


def test_non_numeric_timestamps(tmp_path):
    p = write(tmp_path, "user_id\titem_id\ttimestamp\nu1\tA\t01/02/2020\nu1\tB\t01/03/2020\n")
    with pytest.raises(DataError) as e:
        load_source(files_cfg(tmp_path), 0, tmp_path)
    check(e, p, "neither numbers nor ISO-8601")


@pytest.mark.parametrize("content", ["", "user_id\titem_id\ttimestamp\n"])
def test_empty_files(tmp_path, content):
    p = write(tmp_path, content)
    with pytest.raises(DataError) as e:
        load_source(files_cfg(tmp_path), 0, tmp_path)
    check(e, p, "empty" if not content else "no rows")


def test_movielens_wrong_format(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "ratings.dat").write_text("1,10,5,978300760\n")
    (d / "movies.dat").write_text("10::Heat (1995)::Action\n")
    with pytest.raises(DataError) as e:
        load_source(DataParams(source="movielens", path=str(d)), 0, tmp_path)
    check(e, d / "ratings.dat", "'::'-separated fields")


def test_amazon_bad_json_line_is_kept_for_quarantine_with_its_bytes(tmp_path):
    d = tmp_path / "amz"
    d.mkdir()
    (d / "Toys.jsonl").write_bytes(b'{"user_id": "u", "parent_asin": "P", "timestamp": 1}\n{not json\n')
    (d / "meta_Toys.jsonl").write_text('{"parent_asin": "P", "title": "x"}\n')
    inter, _ = load_source(DataParams(source="amazon2023", path=str(d), category="Toys"), 0, tmp_path)
    assert inter["_error"].tolist()[1].startswith("line 2 is not valid JSON") and pd.isna(inter["_error"][0])
    assert inter["_raw"].tolist()[1] == b"{not json" and inter["_row"].tolist() == [1, 2]


def test_amazon_file_without_one_json_object_fails(tmp_path):
    d = tmp_path / "amz"
    d.mkdir()
    (d / "Toys.jsonl").write_text("{not json\n[1, 2]\n")
    (d / "meta_Toys.jsonl").write_text('{"parent_asin": "P", "title": "x"}\n')
    with pytest.raises(DataError) as e:
        load_source(DataParams(source="amazon2023", path=str(d), category="Toys"), 0, tmp_path)
    check(e, d / "Toys.jsonl", "no line is a JSON object (line 1 is not valid JSON")


def test_unknown_source_and_missing_path(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.source = 'csv': input should be 'synthetic', 'movielens'"):
        parse_params({"data": {"source": "csv"}})
    with pytest.raises(ConfigError, match="neither data.path nor data.url"):
        load_source(DataParams(source="movielens"), 0, tmp_path)


def test_ingest_stage_prints_one_clear_line_and_leaves_raw_alone(tmp_path, capsys):
    raw = tmp_path / "raw"
    p = write(raw, "user_id;item_id;timestamp\nu1;A;1600000000\n")
    before = p.read_bytes()
    params = tmp_path / "params.yaml"
    params.write_text(f"seed: 1\ndata:\n  source: files\n  path: {raw}\n")
    with pytest.raises(SystemExit) as e:
        ingest_main(["--params", str(params), "--out", str(tmp_path / "out")])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR [ingest]") and "semicolon-separated" in err and "Traceback" not in err
    assert p.read_bytes() == before
    assert not (tmp_path / "out").exists()


def test_single_bad_timestamp_is_kept_for_quarantine(tmp_path):
    write(tmp_path, "user_id\titem_id\ttimestamp\nu1\tA\t1600000000\nu1\tB\tyesterday\nu2\tA\t1600000100\n")
    inter, _ = load_source(files_cfg(tmp_path), 0, tmp_path)
    assert inter["timestamp"].isna().tolist() == [False, True, False]
    assert pd.api.types.is_integer_dtype(inter["timestamp"])
