"""Reading delimited and Parquet files with errors that say what is wrong and how to fix it."""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Iterator
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
        df = _read_delimited(path, _SEPARATORS[suffix], required, columns)
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
    # lineage: the row's line in a JSON Lines file, else its record number
    df["_row"] = df.pop("_line").to_numpy() if "_line" in df.columns else range(1, len(df) + 1)
    return df


def _read_delimited(path: Path, sep: str, required, columns) -> pd.DataFrame:
    """TSV as TSV: tab-separated with no quoting convention, so a title's `"` or `12"` is text. CSV
    follows RFC 4180 quoting, where a stray quote can swallow the rows after it: a line break inside
    any field but `description` is refused, naming the lines. Either way the parsed records are
    checked against the file's lines, so rows are never merged or dropped without a word."""
    name = _OTHER_SEPS[sep]
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    try:
        # utf-8-sig: a byte-order mark (Excel's UTF-8 export) is not part of the first column's name
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig",
                         quoting=quoting)
    except UnicodeDecodeError as e:
        line = _line_of_offset(path, e.start)
        raise DataError(path, f"is not UTF-8 text (line {line}, byte {e.start})",
                        "re-save the file as UTF-8") from None
    except pd.errors.EmptyDataError as e:
        raise DataError(path, f"cannot be parsed as {name}-separated ({e})", "re-export the data with a header row") from None
    except pd.errors.ParserError as e:
        raise _parser_error(path, sep, str(e)) from None
    _check_delimiter(path, df, sep, required, columns)
    _check_records(path, df, sep)
    return df


def _parser_error(path: Path, sep: str, msg: str) -> DataError:
    name = _OTHER_SEPS[sep]
    if m := re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", msg):
        want, line, saw = m.groups()
        return DataError(path, f"line {line} has {saw} {name}-separated fields, the header has {want}",
                         f"remove the extra {name} from that line's values (or fix the header)")
    if "EOF inside string" in msg:
        line = _unbalanced_quote_line(path)
        return DataError(path, f"line {line} opens a double quote that is never closed",
                         "close the quote, or write a literal quote inside a quoted field as \"\" (RFC 4180); "
                         "or save the file as .tsv, which has no quoting")
    return DataError(path, f"cannot be parsed as {name}-separated ({msg})",
                     f"check the delimiter: {path.suffix} files must be {name}-separated")


def _physical_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its terminator) of every non-blank line."""
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            body = line.rstrip(b"\r\n")
            if body:
                yield n, body


def _line_of_offset(path: Path, offset: int) -> int:
    with path.open("rb") as f:
        return f.read(offset).count(b"\n") + 1


def _unbalanced_quote_line(path: Path) -> int | str:
    open_at = None
    for n, body in _physical_lines(path):
        if body.count(b'"') % 2:
            open_at = n if open_at is None else None
    return open_at if open_at is not None else "?"


def _check_records(path: Path, df: pd.DataFrame, sep: str) -> None:
    """Every non-blank line after the header is one record (a CSV description may span lines)."""
    lines = [n for n, _ in _physical_lines(path)][1:]
    breaks = df.apply(lambda col: col.str.count(r"\r\n|\n|\r").fillna(0)).astype(int)
    spans = 1 + breaks.sum(axis=1).to_numpy()
    if len(df) == len(lines) and (spans == 1).all():
        return
    bounds, k = [], 0  # each record's first and last line: records consume `span` non-blank lines in order
    for span in spans:
        bounds.append((lines[min(k, len(lines) - 1)], lines[min(k + int(span) - 1, len(lines) - 1)]) if lines else (2, 2))
        k += int(span)
    merged = [(int(r), c) for r, c in zip(*(breaks.drop(columns=["description"], errors="ignore") > 0).to_numpy().nonzero(),
                                         strict=True)]
    if merged:
        r, c = merged[0]
        first, last = bounds[r]
        raise DataError(path, f"lines {first}-{last} were read as one row: column '{df.columns[c]}' of line {first} "
                        "opens a double quote that closes on a later line",
                        "write a literal quote inside a quoted field as \"\" (RFC 4180), quote the whole field, "
                        "or save the file as .tsv, which has no quoting")
    if sum(spans) != len(lines):
        raise DataError(path, f"{len(df)} rows parsed from {len(lines)} non-blank lines after the header",
                        "check the file's quoting and line endings; no row may be merged or dropped")


def _json_value(v) -> str | None:
    """JSON scalar -> text as CSV would hold it; an integral float id (7.0) is its integer text."""
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def json_lines(path: Path, opener=None) -> Iterator[tuple[int, dict | None, bytes, str | None]]:
    """Stream JSON Lines: (line number, object or None, raw bytes, error or None) for each non-blank line.

    A line that is not UTF-8 JSON holding one object comes back with its raw bytes and the reason,
    so the caller can quarantine it instead of failing a multi-GB file for one line. `opener` opens
    the file in binary (default: plain, or gzip by extension).
    """
    opener = opener or (lambda p: gzip.open(p, "rb") if p.suffix == ".gz" else p.open("rb"))
    with opener(path) as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            raw = raw.rstrip(b"\r\n")
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield n, None, raw, f"line {n} is not UTF-8"
                continue
            except json.JSONDecodeError as e:
                yield n, None, raw, f"line {n} is not valid JSON ({e.msg})"
                continue
            if not isinstance(rec, dict):
                yield n, None, raw, f"line {n} is a JSON {type(rec).__name__}, not an object"
                continue
            yield n, rec, raw, None


def _read_jsonl(path: Path) -> pd.DataFrame:
    """JSON Lines, one object per line. Values become strings (as in CSV) so ids keep their exact text;
    null stays missing. pandas.read_json would turn ids 7 and 7.0 into the same float. A bad line is a
    row with `_error` (the reason) and `_raw` (its bytes) for validation to quarantine."""
    rows, bad = [], []
    for n, rec, raw, err in json_lines(path):
        if err is None:
            rows.append({**{k: _json_value(v) for k, v in rec.items()}, "_line": n})
        else:
            bad.append({"_line": n, "_error": err, "_raw": raw})
    df = pd.concat([pd.DataFrame(rows), pd.DataFrame(bad)], ignore_index=True) if bad else pd.DataFrame(rows)
    if df.empty:
        return df
    df = df.sort_values("_line", kind="stable").reset_index(drop=True)
    for c in df.columns:
        if c not in ("_line", "_raw"):
            df[c] = df[c].astype("string")
    return df


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
