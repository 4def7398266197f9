"""LAPIS (Leuven Art Personalized Image Set): a local folder or the password-protected zip → raw layout.

LAPIS is gated: the user requests it from its authors and gets a zip (ZipCrypto password, read
from an environment variable). The ratings table has one row per (image, rater); this module
averages them per image. The password is never written, logged or put in an exception message.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import zipfile
import zlib
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterator

import pandas as pd
from tqdm import tqdm

from squeezegen.data.raw import (
    IMAGES_DIR,
    hash_fraction,
    make_record,
    raw_output,
    unique_image_ids,
    write_records_and_manifest,
)
from squeezegen.errors import UserError

ANNOTATION_SUFFIXES = (".csv", ".xlsx")
_AES_COMPRESS_TYPE = 99  # WinZip AES: zipfile cannot decrypt it


def _not_found_message(path: Path, password_env: str) -> str:
    return (
        f"LAPIS not found at '{path}'. LAPIS (Leuven Art Personalized Image Set) is a gated dataset: request "
        "access from its authors (Maerten et al. 2025, arXiv 2504.07670, and the LAPIS project page it links "
        "to). Then either put the password-protected "
        "archive at data/LAPIS.zip or unzip it anywhere, and point the `data.lapis_path` param at the zip or "
        f"the folder (e.g. `dvc exp run -S data.lapis_path=/path/to/LAPIS`). For the zip, also set the "
        f"{password_env} environment variable to the password the authors sent you."
    )


class _Archive:
    """Uniform read access to LAPIS as a folder or a zip: names are POSIX paths relative to the root."""

    def __init__(self, path: Path, password_env: str) -> None:
        self.path = path
        self.password_env = password_env
        self.zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self.names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
            return
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as err:
            raise UserError(
                f"{path} is neither a folder nor a readable zip ({err}); {_not_found_message(path, password_env)}"
            ) from None
        try:
            self.names = self._check_encryption()
        except UserError:
            self.zip.close()
            raise

    def _check_encryption(self) -> list[str]:
        """Refuse AES; hand the ZipCrypto password (from the environment) to zipfile. Returns member names."""
        assert self.zip is not None
        infos = [i for i in self.zip.infolist() if not i.is_dir()]
        if any(i.compress_type == _AES_COMPRESS_TYPE for i in infos):
            raise UserError(
                f"{self.path} is AES-encrypted, which Python's zipfile cannot decrypt. Unzip it yourself "
                "(e.g. `7z x LAPIS.zip`, entering the password when asked) and set `data.lapis_path` to the "
                "unzipped folder."
            )
        if any(i.flag_bits & 0x1 for i in infos):
            password = os.environ.get(self.password_env)
            if not password:
                raise UserError(
                    f"{self.path} is password-protected: set the {self.password_env} environment variable to the "
                    "password the LAPIS authors sent you (or unzip it and set `data.lapis_path` to the folder)."
                )
            self.zip.setpassword(password.encode("utf-8"))
        return sorted(i.filename for i in infos)

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        """A binary stream of one member, read lazily (never the whole archive); read errors → UserError."""
        if self.zip is None:
            with open(self.path / name, "rb") as stream:
                yield stream
            return
        try:
            stream = self.zip.open(name)
        except RuntimeError as err:  # zipfile's "Bad password for file ..." (it holds no password)
            raise UserError(
                f"cannot decrypt {name} in {self.path}: the password in {self.password_env} is wrong ({err})"
            ) from None
        try:
            with stream:
                yield stream
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise UserError(f"cannot read {name} from {self.path}: wrong password or damaged archive ({err})") from None

    def copy_to(self, name: str, target: Path) -> None:
        """Copy one member to `target` byte for byte."""
        with self.open(name) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _find_annotation(names: list[str]) -> str | None:
    """The ratings table: annotation/LAPIS*.csv (preferred) or .xlsx, anywhere in the tree."""
    candidates = [
        n for n in names
        if PurePosixPath(n).parent.name == "annotation"
        and PurePosixPath(n).name.upper().startswith("LAPIS")
        and PurePosixPath(n).suffix.lower() in ANNOTATION_SUFFIXES
    ]
    # csv before xlsx; among those, the individual-ratings table first
    candidates.sort(key=lambda n: (PurePosixPath(n).suffix.lower() != ".csv", "individualratings" not in n.lower(), n))
    return candidates[0] if candidates else None


def _read_table(archive: _Archive, name: str) -> pd.DataFrame:
    """The ratings table (csv streamed; xlsx read into memory because openpyxl needs to seek)."""
    try:
        with archive.open(name) as stream:
            if name.lower().endswith(".xlsx"):
                return pd.read_excel(io.BytesIO(stream.read()), engine="openpyxl")
            table = pd.read_csv(stream, low_memory=False)
        if table.shape[1] == 1 and ";" in str(table.columns[0]):  # a semicolon-separated export
            with archive.open(name) as stream:
                table = pd.read_csv(stream, sep=";", low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, KeyError) as err:
        raise UserError(f"cannot parse the ratings table {name} in {archive.path}: {err}") from None
    return table


def _column(table: pd.DataFrame, *names: str, required: bool, source: str) -> str | None:
    lookup = {str(c).strip().lower(): c for c in table.columns}
    for name in names:
        if name in lookup:
            return lookup[name]
    if required:
        raise UserError(f"{source}: no column {' or '.join(names)} (columns: {', '.join(map(str, table.columns))})")
    return None


def _most_common(values: pd.Series) -> str | None:
    """The most frequent non-null value; ties go to the alphabetically first (deterministic)."""
    counts = Counter(str(v) for v in values.dropna())
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0] if counts else None


def aggregate_ratings(
    table: pd.DataFrame, image_names: set[str], *, source: str = "ratings"
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Per-image mean score, rating count, style and genre from one-row-per-rating LAPIS data.

    `image_names` are the base names of the images present. Rows with a non-numeric or
    out-of-range (outside 0-100) response, or naming an absent image, are dropped and counted.
    Returns (one row per image indexed by base name: score, n_ratings, style, genre; skip counts).
    """
    file_col = _column(table, "file", "image_filename", required=True, source=source)
    response_col = _column(table, "response", required=True, source=source)
    style_col = _column(table, "style", required=False, source=source)
    genre_col = _column(table, "genre", required=False, source=source)
    base = table[file_col].astype(str).str.replace("\\", "/", regex=False).map(lambda p: PurePosixPath(p.strip()).name)
    response = pd.to_numeric(table[response_col], errors="coerce")
    non_numeric = response.isna()
    out_of_range = ~non_numeric & ~response.between(0, 100)
    missing = ~non_numeric & ~out_of_range & ~base.isin(image_names)
    keep = ~(non_numeric | out_of_range | missing)
    skipped = {
        "non_numeric_response": int(non_numeric.sum()),
        "response_out_of_range": int(out_of_range.sum()),
        "missing_image": int(missing.sum()),
    }
    rows = pd.DataFrame({
        "base": base[keep],
        "response": response[keep].astype(float),
        "style": table.loc[keep, style_col] if style_col else None,
        "genre": table.loc[keep, genre_col] if genre_col else None,
    })
    grouped = rows.groupby("base", sort=True)
    per_image = pd.DataFrame({
        "score": grouped["response"].mean(),
        "n_ratings": grouped["response"].count(),
        "style": grouped["style"].agg(_most_common),
        "genre": grouped["genre"].agg(_most_common),
    })
    return per_image, skipped


def fetch_lapis(
    out_dir: str | Path,
    *,
    path: str | Path,
    password_env: str = "LAPIS_PASSWORD",
    max_images: int | None = None,
) -> dict[str, Any]:
    """Copy LAPIS images (as-is) and per-image rating aggregates into the raw layout at `out_dir`.

    `path` is the unzipped LAPIS folder or the zip (password from the `password_env` variable).
    Images are looked up by base name under any images/ folder; image_id is that base name
    without its extension (made file-name-safe). The table's own image_id column is not needed.
    `max_images` keeps a fixed, seed-free subset (by a hash of the image name) for quick runs.
    Writes `out_dir` atomically; returns the manifest. Missing path → UserError saying how to get LAPIS.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(_not_found_message(path, password_env))
    archive = _Archive(path, password_env)
    try:
        annotation = _find_annotation(archive.names)
        if annotation is None:
            raise UserError(
                f"{path} has no annotation/LAPIS*.csv or annotation/LAPIS*.xlsx: expected the LAPIS layout "
                f"(annotation/ with the ratings table, images/ with the paintings). {_not_found_message(path, password_env)}"
            )
        images = {}  # base name → member, first in sorted order wins
        for name in archive.names:
            if "images" in PurePosixPath(name).parts[:-1]:
                images.setdefault(PurePosixPath(name).name, name)
        per_image, skipped = aggregate_ratings(_read_table(archive, annotation), set(images), source=annotation)
        if per_image.empty:
            raise UserError(
                f"{path}: no rated image of {annotation} was found under an images/ folder (skipped rows: {skipped})"
            )
        names = list(per_image.index)
        if max_images is not None and len(names) > max_images:
            names = sorted(sorted(names, key=lambda n: hash_fraction(n, 0))[:max_images])
        records = []
        with raw_output(out_dir) as tmp:
            ids = unique_image_ids(names)
            for base in tqdm(names, desc="LAPIS images", unit="img"):
                row = per_image.loc[base]
                image_id = ids[base]
                rel = f"{IMAGES_DIR}/{image_id}{PurePosixPath(base).suffix}"
                archive.copy_to(images[base], tmp / rel)
                records.append(make_record(image_id, rel, style=row["style"], genre=row["genre"],
                                           score=float(row["score"]), n_ratings=int(row["n_ratings"])))
            manifest = write_records_and_manifest(
                tmp,
                records,
                source="lapis",
                # the path and the variable's NAME only: never the password itself
                params={"path": str(path), "password_env": password_env, "max_images": max_images, "annotation": annotation},
                counts={
                    "n_skipped_by_reason": skipped,
                    "n_rated_images": len(per_image),
                    "n_unrated_images": len(set(images) - set(per_image.index)),
                    "n_ratings": int(per_image["n_ratings"].sum()),
                },
            )
        return manifest
    finally:
        archive.close()
