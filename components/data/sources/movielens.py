"""GroupLens MovieLens raw files: ML-1M (`ratings.dat`, `movies.dat`) and ML-100K (`u.data`, `u.item`).

`path` is a directory holding the files, or the GroupLens zip itself (read in place, not extracted).
Ratings become implicit interactions; the rating value is not used, as in the paper's protocol.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import pandas as pd

from components.data.readers import check_file
from components.data.schema import canonical_interactions, canonical_items
from components.errors import DataError

ML1M = {"ratings": "ratings.dat", "items": "movies.dat"}
ML100K = {"ratings": "u.data", "items": "u.item", "genres": "u.genre"}


class _Files:
    """Uniform access to the files, whether they sit in a directory or a zip."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_dir():
            self._names = {p.name: p for p in path.rglob("*") if p.is_file()}
            self._zip = None
        elif path.is_file() and zipfile.is_zipfile(path):
            self._zip = zipfile.ZipFile(path)
            self._names = {Path(n).name: n for n in self._zip.namelist() if not n.endswith("/")}
        elif path.exists():
            raise DataError(path, "is neither a directory nor a zip archive",
                            "point data.path at the extracted MovieLens folder or its .zip")
        else:
            raise DataError(path, "not found", "set data.path to a MovieLens folder or zip, or data.url to download one")

    def has(self, name: str) -> bool:
        return name in self._names

    def where(self, name: str) -> str:
        return f"{self.path}!{self._names[name]}" if self._zip else str(self._names[name])

    def text(self, name: str, encoding: str) -> str:
        if self._zip is not None:
            data = self._zip.read(self._names[name])
        else:
            check_file(self._names[name])
            data = self._names[name].read_bytes()
        if not data.strip():
            raise DataError(self.where(name), "file is empty", "re-download the MovieLens archive")
        return data.decode(encoding)


def _split(text: str, sep: str, ncols: int, where: str, expected: str) -> pd.DataFrame:
    """Split records on a (possibly multi-character) separator, checking the field count."""
    if sep != "\t":
        text = text.replace("\t", " ").replace(sep, "\t")
    fix = f"expected the GroupLens format {expected}; check that this is the original file"
    try:
        df = pd.read_csv(io.StringIO(text), sep="\t", header=None, names=range(ncols), dtype=str,
                         quoting=csv.QUOTE_NONE, keep_default_na=False, na_values=[""], index_col=False)
    except pd.errors.ParserError as e:
        raise DataError(where, f"has lines with more than {ncols} '{sep}'-separated fields ({e})", fix) from None
    if df.iloc[:, ncols - 1].isna().all():
        raise DataError(where, f"does not have {ncols} '{sep}'-separated fields per line", fix)
    df["_source"] = where
    df["_row"] = range(1, len(df) + 1)
    return df


def load_movielens(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    files = _Files(path)
    if files.has(ML1M["ratings"]) and files.has(ML1M["items"]):
        return _load_1m(files)
    if files.has(ML100K["ratings"]) and files.has(ML100K["items"]):
        return _load_100k(files)
    raise DataError(path, "holds neither ML-1M (ratings.dat + movies.dat) nor ML-100K (u.data + u.item)",
                    "point data.path at an original GroupLens MovieLens folder or zip")


def _load_1m(files: _Files) -> tuple[pd.DataFrame, pd.DataFrame]:
    r_where, m_where = files.where("ratings.dat"), files.where("movies.dat")
    ratings = _split(files.text("ratings.dat", "latin-1"), "::", 4, r_where, "UserID::MovieID::Rating::Timestamp")
    movies = _split(files.text("movies.dat", "latin-1"), "::", 3, m_where, "MovieID::Title::Genres")
    ratings = ratings.rename(columns={0: "user_id", 1: "item_id", 3: "timestamp"})
    genres = movies[2].fillna("").str.replace("|", ", ", regex=False)
    movies = movies.rename(columns={0: "item_id", 1: "title"}).assign(description="Genres: " + genres)
    return canonical_interactions(ratings, r_where), canonical_items(movies, m_where)


def _load_100k(files: _Files) -> tuple[pd.DataFrame, pd.DataFrame]:
    r_where, i_where = files.where("u.data"), files.where("u.item")
    ratings = _split(files.text("u.data", "latin-1"), "\t", 4, r_where, "user<TAB>item<TAB>rating<TAB>timestamp")
    items = _split(files.text("u.item", "latin-1"), "|", 24, i_where, "id|title|release|video|url|19 genre flags")
    ratings = ratings.rename(columns={0: "user_id", 1: "item_id", 3: "timestamp"})
    names = _genre_names(files)
    flags = items[list(range(5, 24))].eq("1").to_numpy()
    desc = ["Genres: " + ", ".join(n for n, f in zip(names, row, strict=True) if f) if row.any() else "" for row in flags]
    items = items.rename(columns={0: "item_id", 1: "title"}).assign(description=desc)
    return canonical_interactions(ratings, r_where), canonical_items(items, i_where)


def _genre_names(files: _Files) -> list[str]:
    if not files.has("u.genre"):
        return [f"genre {i}" for i in range(19)]
    rows = [line.split("|") for line in files.text("u.genre", "latin-1").splitlines() if "|" in line]
    by_index = {int(i): name for name, i in rows if i.strip().isdigit()}
    return [by_index.get(i, f"genre {i}") for i in range(19)]
