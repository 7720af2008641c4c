"""Reading delimited and Parquet files with errors that say what is wrong and how to fix it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd

from components.errors import DataError

_SEPARATORS = {".tsv": "\t", ".csv": ",", ".txt": "\t"}
_OTHER_SEPS = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe", "::": "'::'"}


def check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "file not found", "check data.path in params.yaml and that the file exists")
    if not path.is_file():
        raise DataError(path, "is not a regular file", "point data.path at the file or its directory")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty", "re-export the data; an empty file has no header and no rows")
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror})", "fix the file's permissions") from None


def read_table(path: Path, required: list[str], columns: dict[str, str] | None = None) -> pd.DataFrame:
    """Read a .tsv/.csv/.parquet/.jsonl table, rename mapped columns to canonical names, check required ones.

    `columns` maps canonical name -> name in the file (params `data.columns`). All values are read
    as strings: ids must not lose leading zeros, and typing happens in one place (schema.py).
    """
    check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises many types for a corrupt file
            raise DataError(path, f"is not a readable Parquet file ({type(e).__name__}: {e})",
                            "re-export it as Parquet, or use .tsv/.csv") from None
        df = df.astype({c: "string" for c in df.columns if df[c].dtype == object})
    elif suffix in _SEPARATORS:
        sep = _SEPARATORS[suffix]
        try:
            df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(path, "is not UTF-8 text", "re-save the file as UTF-8") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise DataError(path, f"cannot be parsed as {_OTHER_SEPS[sep]}-separated ({e})",
                            f"check the delimiter: {suffix} files must be {_OTHER_SEPS[sep]}-separated") from None
        _check_delimiter(path, df, sep, required, columns)
    elif suffix == ".jsonl":
        df = _read_jsonl(path)
    else:
        raise DataError(path, f"unsupported file type '{suffix}'", "use .tsv, .csv, .parquet or .jsonl")

    df = df.rename(columns={v: k for k, v in (columns or {}).items()})
    missing = [c for c in required if c not in df.columns]
    if missing:
        mapped = {c: (columns or {}).get(c, c) for c in missing}
        raise DataError(
            path,
            f"missing column(s) {[mapped[c] for c in missing]}; found {list(df.columns)}",
            "rename the columns, or map yours in params.yaml, e.g. data.columns: {item_id: movie_id}",
        )
    if len(df) == 0:
        raise DataError(path, "has a header but no rows", "re-export the data with its rows")
    df["_source"] = str(path)
    df["_row"] = range(1, len(df) + 1)
    return df


def _read_jsonl(path: Path) -> pd.DataFrame:
    """JSON Lines, one object per line. Values become strings (as in CSV) so ids keep their exact text;
    null stays missing. pandas.read_json would turn ids 7 and 7.0 into the same float."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(path, f"line {n} is not valid JSON ({e})",
                                "write one JSON object per line (JSON Lines), UTF-8") from None
            if not isinstance(rec, dict):
                raise DataError(path, f"line {n} is a JSON {type(rec).__name__}, not an object",
                                "write one JSON object per line, e.g. {\"user_id\": \"u1\", ...}")
            rows.append({k: None if v is None else str(v) for k, v in rec.items()})
    return pd.DataFrame(rows, dtype="string")


def _check_delimiter(path: Path, df: pd.DataFrame, sep: str, required, columns) -> None:
    wanted = {(columns or {}).get(c, c) for c in required}
    if len(df.columns) == 1 and not wanted <= set(df.columns):
        header = str(df.columns[0])
        for other, name in _OTHER_SEPS.items():
            if other != sep and other in header:
                raise DataError(
                    path,
                    f"looks {name}-separated, but {path.suffix} files are read as {_OTHER_SEPS[sep]}-separated",
                    f"convert it to {_OTHER_SEPS[sep]}-separated or rename it to match its delimiter "
                    "(.tsv = tab, .csv = comma)",
                )


def open_text(path: Path, encoding: str = "utf-8"):
    """Open plain or gzip-compressed text by extension."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding)
    return path.open("r", encoding=encoding)
