"""The LAPIS ratings table: found in the archive by its columns, read, and averaged per image.

The table has one row per (image, rater). It is recognised by its columns, not its file name
(releases name it differently): a .csv or .xlsx with a file column (`file` or `image_filename`)
and a `response` column. Tables under an `annotation/` folder are preferred; a .csv and an
.xlsx with the same path stem are one table in two formats (the .csv is read).
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any, ContextManager, Iterable, Protocol

import pandas as pd

from squeezegen.data.raw import is_junk
from squeezegen.errors import UserError

TABLE_SUFFIXES = (".csv", ".xlsx")
FILE_COLUMNS = ("file", "image_filename")
RESPONSE_COLUMNS = ("response",)
REQUIRED_COLUMNS = (FILE_COLUMNS, RESPONSE_COLUMNS)  # each entry: any one of these names
LAPIS_ID_COLUMNS = ("image_id", "imageid")  # the dataset's own numeric image id (optional)
# Why a rating row is not used; listed in this order of precedence, zeros included.
ROW_SKIP_REASONS = ("blank_file", "blank_response", "non_numeric_response", "response_out_of_range", "missing_image")


class Archive(Protocol):
    """What this module needs of `lapis._Archive`: member names and a binary stream per member."""

    path: Any
    names: list[str]

    def open(self, name: str) -> ContextManager[IO[bytes]]: ...


def _lookup(columns: Iterable[Any]) -> dict[str, Any]:
    return {str(c).strip().lower(): c for c in columns}


def missing_columns(columns: Iterable[Any]) -> list[str]:
    """The required columns absent from `columns` (case and spaces ignored), as "a or b" strings."""
    present = _lookup(columns)
    return [" or ".join(names) for names in REQUIRED_COLUMNS if not any(n in present for n in names)]


class _Unparsable(Exception):
    """A table pandas cannot parse (the message says why)."""


def _read(archive: Archive, name: str, *, header_only: bool) -> pd.DataFrame:
    """One csv/xlsx member (csv streamed; xlsx read into memory: openpyxl needs to seek)."""
    nrows = 0 if header_only else None
    try:
        with archive.open(name) as stream:
            if name.lower().endswith(".xlsx"):
                return pd.read_excel(io.BytesIO(stream.read()), engine="openpyxl", nrows=nrows)
            table = pd.read_csv(stream, low_memory=False, nrows=nrows)
        if table.shape[1] == 1 and ";" in str(table.columns[0]):  # a semicolon-separated export
            with archive.open(name) as stream:
                table = pd.read_csv(stream, sep=";", low_memory=False, nrows=nrows)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, KeyError, OSError) as err:
        raise _Unparsable(str(err) or type(err).__name__) from None
    return table


def find_ratings_table(archive: Archive) -> str:
    """The member name of the ratings table; UserError naming what was looked at when none or two qualify."""
    tables = [n for n in archive.names if PurePosixPath(n).suffix.lower() in TABLE_SUFFIXES and not is_junk(n)]
    if not tables:
        raise UserError(
            f"{archive.path} holds no .csv or .xlsx file, so no ratings table: expected the LAPIS layout "
            "(annotation/ with the ratings table, images/ with the paintings)."
        )
    preferred = [n for n in tables if "annotation" in PurePosixPath(n).parts[:-1]]
    looked_at: dict[str, str] = {}  # member → why it does not qualify
    qualifying: list[str] = []
    for group in (preferred, [n for n in tables if n not in preferred]):  # elsewhere only if annotation/ has none
        for name in sorted(group, key=lambda n: (PurePosixPath(n).suffix.lower() != ".csv", n)):
            stem = name.rsplit(".", 1)[0]
            if any(q.rsplit(".", 1)[0] == stem for q in qualifying):
                continue  # the .xlsx twin of a qualifying .csv
            try:
                missing = missing_columns(_read(archive, name, header_only=True).columns)
            except _Unparsable as err:
                looked_at[name] = f"unreadable: {err}"
                continue
            if missing:
                looked_at[name] = "no column " + ", no column ".join(missing)
            else:
                qualifying.append(name)
        if qualifying:
            break
    if len(qualifying) > 1:
        raise UserError(
            f"{archive.path}: {len(qualifying)} tables have the ratings columns ({', '.join(qualifying)}), and "
            "squeezegen cannot tell which one holds the ratings. Keep only that one (unzip the archive if needed, "
            "delete or move the others out of the folder, and point `data.lapis_path` at the folder)."
        )
    if not qualifying:
        details = "; ".join(f"{name}: {why}" for name, why in sorted(looked_at.items()))
        raise UserError(
            f"{archive.path}: no ratings table found. A ratings table is a .csv or .xlsx with the columns "
            f"{' and '.join(' or '.join(names) for names in REQUIRED_COLUMNS)} (one row per image and rater). "
            f"Looked at: {details}. Fix or replace the table named above (the LAPIS release has it under annotation/)."
        )
    return qualifying[0]


def read_ratings_table(archive: Archive, name: str) -> pd.DataFrame:
    """The whole ratings table `name`; UserError if pandas cannot parse it."""
    try:
        return _read(archive, name, header_only=False)
    except _Unparsable as err:
        raise UserError(f"cannot parse the ratings table {name} in {archive.path}: {err}") from None


def _column(table: pd.DataFrame, names: tuple[str, ...], *, required: bool, source: str) -> Any:
    lookup = _lookup(table.columns)
    for name in names:
        if name in lookup:
            return lookup[name]
    if required:
        raise UserError(
            f"{source}: no column {' or '.join(names)} (columns: {', '.join(map(str, table.columns))}); "
            "this is not a LAPIS ratings table"
        )
    return None


def _most_common(values: pd.Series) -> str | None:
    """The most frequent non-null value; ties go to the alphabetically first (deterministic)."""
    counts = Counter(str(v) for v in values.dropna())
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0] if counts else None


def _most_common_int(values: pd.Series) -> int | None:
    """The most frequent integer value (ties → the smallest); None if there is none."""
    counts = Counter(int(v) for v in values.dropna())
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0] if counts else None


@dataclass(frozen=True)
class Ratings:
    """The ratings table averaged per image, and what was not used."""

    per_image: pd.DataFrame  # index: image base name; score, n_ratings, style, genre, lapis_image_id
    named: frozenset[str]  # base names of every image the table names (used or not)
    n_rows: int  # rating rows in the table
    rows_skipped: dict[str, int]  # ROW_SKIP_REASONS → rating rows


def _is_blank(values: pd.Series) -> pd.Series:
    return values.map(lambda v: bool(pd.isna(v)) or not str(v).strip()).astype(bool)


def _base_name(value: Any) -> str:
    """The base name of a path as the table writes it (`Baroque\\x.jpg` → `x.jpg`); "" if blank."""
    return "" if pd.isna(value) else PurePosixPath(str(value).strip().replace("\\", "/")).name


def aggregate_ratings(table: pd.DataFrame, image_names: set[str], *, source: str = "ratings") -> Ratings:
    """Per-image mean score, rating count, style, genre and LAPIS id from one-row-per-rating data.

    `image_names` are the base names of the images present. A row is skipped (and counted, by
    the first reason in ROW_SKIP_REASONS that applies) if its file or response is blank, its
    response is not a number or lies outside 0-100, or its image is absent.
    """
    file_col = _column(table, FILE_COLUMNS, required=True, source=source)
    response_col = _column(table, RESPONSE_COLUMNS, required=True, source=source)
    style_col = _column(table, ("style",), required=False, source=source)
    genre_col = _column(table, ("genre",), required=False, source=source)
    id_col = _column(table, LAPIS_ID_COLUMNS, required=False, source=source)
    blank_file = _is_blank(table[file_col])
    base = table[file_col].map(_base_name).astype(str)
    blank = ~blank_file & _is_blank(table[response_col])
    response = pd.to_numeric(table[response_col], errors="coerce")
    non_numeric = ~blank_file & ~blank & response.isna()
    out_of_range = response.notna() & ~response.between(0, 100) & ~blank_file
    missing = ~(blank_file | blank | non_numeric | out_of_range) & ~base.isin(image_names)
    masks = dict(zip(ROW_SKIP_REASONS, (blank_file, blank, non_numeric, out_of_range, missing)))
    keep = ~(blank_file | blank | non_numeric | out_of_range | missing)
    lapis_id = pd.to_numeric(table[id_col], errors="coerce") if id_col is not None else None
    rows = pd.DataFrame({
        "base": base[keep],
        "response": response[keep].astype(float),
        "style": table.loc[keep, style_col] if style_col is not None else None,
        "genre": table.loc[keep, genre_col] if genre_col is not None else None,
        # a non-integer id is no id (LAPIS's are whole numbers)
        "lapis_image_id": lapis_id[keep].where(lapis_id[keep] % 1 == 0) if lapis_id is not None else None,
    })
    grouped = rows.groupby("base", sort=True)
    per_image = pd.DataFrame({
        "score": grouped["response"].mean(),
        "n_ratings": grouped["response"].count(),
        "style": grouped["style"].agg(_most_common),
        "genre": grouped["genre"].agg(_most_common),
        "lapis_image_id": grouped["lapis_image_id"].agg(_most_common_int).astype(object),
    })
    return Ratings(
        per_image=per_image,
        named=frozenset(base[~blank_file]),
        n_rows=len(table),
        rows_skipped={reason: int(mask.sum()) for reason, mask in masks.items()},
    )
