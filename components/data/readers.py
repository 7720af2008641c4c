"""Reading delimited and Parquet files with errors that say what is wrong and how to fix it."""

from __future__ import annotations

import csv
import gzip
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from components.errors import DataError

_SEPARATORS = {".tsv": "\t", ".csv": ",", ".txt": "\t"}
#: columns the readers add; a record's own keys of these names are dropped (JSON Lines)
LINEAGE = ("_line", "_error", "_raw", "_source", "_row")
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
            # numpy_nullable: an integer column with a null stays integer (not float, which turns 7 into
            # 7.0 and ids above 2^53 into other ids)
            df = pd.read_parquet(path, dtype_backend="numpy_nullable")
        except Exception as e:  # pyarrow raises many types for a corrupt file
            raise DataError(path, f"is not a readable Parquet file ({type(e).__name__}: {e})",
                            "re-export it as Parquet, or use .tsv/.csv") from None
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
    """TSV as TSV: tab-separated with no quoting convention, so a title's `"` or `12"` is text, and no
    row can swallow another. CSV follows RFC 4180 quoting, where a stray quote can swallow the rows
    after it: a line break inside any field but `description` is refused, naming the lines. A line
    with more fields than the header fails naming it; one with fewer has missing values, which
    `validate` quarantines."""
    name = _OTHER_SEPS[sep]
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    try:
        # utf-8-sig: a byte-order mark (Excel's UTF-8 export) is not part of the first column's name.
        # index_col=False: a first data line with one field too many must fail, not become the index.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""],
                             encoding="utf-8-sig", quoting=quoting, index_col=False)
    except UnicodeDecodeError:
        raise DataError(path, f"is not UTF-8 text (line {_first_non_utf8_line(path)})",
                        "re-save the file as UTF-8") from None
    except pd.errors.EmptyDataError as e:
        raise DataError(path, f"cannot be parsed as {name}-separated ({e})", "re-export the data with a header row") from None
    except pd.errors.ParserError as e:
        raise _parser_error(path, sep, str(e)) from None
    if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
        _check_extra_fields(path, sep, quoting, len(df.columns))  # pandas cut fields beyond the header
    _check_delimiter(path, df, sep, required, columns)
    if sep != "\t":
        _check_merged_rows(path, df)
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


def _check_extra_fields(path: Path, sep: str, quoting: int, width: int) -> None:
    """Fields beyond the header's were dropped by pandas: fine when they are all empty (a trailing
    separator on every line), otherwise the first line that had one fails, named."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        for n, fields in enumerate(csv.reader(f, delimiter=sep, quoting=quoting), 1):
            if n > 1 and any(v.strip() for v in fields[width:]):
                name = _OTHER_SEPS[sep]
                raise DataError(path, f"line {n} has {len(fields)} {name}-separated fields, the header has {width}",
                                f"remove the extra {name} from that line's values (or fix the header)")


def _first_non_utf8_line(path: Path) -> int | str:
    """1-based number of the first line that is not UTF-8 (only on the error path: one pass in Python)."""
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return "?"


def _unbalanced_quote_line(path: Path) -> int | str:
    open_at = None
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            if line.count(b'"') % 2:
                open_at = n if open_at is None else None
    return open_at if open_at is not None else "?"


def _check_merged_rows(path: Path, df: pd.DataFrame) -> None:
    """CSV: a field other than `description` holding a line break means a quote swallowed the lines after
    it. Only object columns are scanned, and only when the file has a quote at all."""
    with path.open("rb") as f:
        if not any(b'"' in block for block in iter(lambda: f.read(1 << 24), b"")):
            return
    spans = pd.Series(1, index=df.index)
    merged_at = None
    for col in df.columns:
        breaks = df[col].str.count(r"\r\n|\n|\r").fillna(0).astype(int)
        spans += breaks
        if col != "description" and merged_at is None and (breaks > 0).any():
            merged_at = (int((breaks > 0).to_numpy().argmax()), col)
    if merged_at is None:
        return
    r, col = merged_at
    first = 2 + r + int((spans.iloc[:r] - 1).sum())  # the header is line 1 (blank lines not counted)
    last = first + int(spans.iloc[r]) - 1
    raise DataError(path, f"lines {first}-{last} were read as one row: column '{col}' of line {first} "
                    "opens a double quote that closes on a later line",
                    "write a literal quote inside a quoted field as \"\" (RFC 4180), quote the whole field, "
                    "or save the file as .tsv, which has no quoting")


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
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark, as CSV and TSV accept
                raw = raw[3:]
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield n, None, raw, f"line {n} is not UTF-8"
                continue
            except json.JSONDecodeError as e:
                yield n, None, raw, f"line {n} is not valid JSON ({e.msg})"
                continue
            except RecursionError:  # deeper than the parser recurses: one bad line, not a crash of the file
                yield n, None, raw, f"line {n} is nested too deeply to parse"
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
        if err is None:  # a record's own keys never take the lineage columns' names
            rows.append({**{k: _json_value(v) for k, v in rec.items() if k not in LINEAGE}, "_line": n})
        else:
            bad.append({"_line": n, "_error": err, "_raw": raw})
    if bad and not rows:
        raise DataError(path, f"no line is a JSON object ({bad[0]['_error']})",
                        "write one JSON object per line (JSON Lines), UTF-8, e.g. {\"user_id\": \"u1\", ...}")
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
