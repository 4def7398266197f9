"""LAPIS (Leuven Art Personalized Image Set): a local folder or the password-protected zip → raw layout.

LAPIS is gated: the user requests it from its authors and gets a zip (ZipCrypto password, read
from an environment variable). The ratings table (one row per image and rater, found by its
columns: see `lapis_ratings`) is averaged per image. The password is never written, logged or
put in an exception message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterator

import pandas as pd
from PIL import Image
from tqdm import tqdm

from squeezegen.data.lapis_ratings import TABLE_SUFFIXES, aggregate_ratings, find_ratings_table, read_ratings_table
from squeezegen.data.raw import (
    IMAGES_DIR,
    hash_fraction,
    is_junk,
    make_record,
    raw_output,
    unique_image_ids,
    write_records_and_manifest,
)
from squeezegen.errors import UserError

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


def _optional_int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def fetch_lapis(
    out_dir: str | Path,
    *,
    path: str | Path,
    password_env: str = "LAPIS_PASSWORD",
    max_images: int | None = None,
) -> dict[str, Any]:
    """Copy LAPIS images (as-is) and per-image rating aggregates into the raw layout at `out_dir`.

    `path` is the unzipped LAPIS folder or the zip (password from the `password_env` variable).
    The ratings table is found by its columns (`lapis_ratings.find_ratings_table`). Images are
    looked up by base name under any images/ folder (OS litter such as Thumbs.db ignored);
    image_id is that base name without its extension (made file-name-safe), lapis_image_id the
    table's own numeric id. `max_images` keeps a fixed, seed-free subset (by a hash of the image
    name) for quick runs. Writes `out_dir` atomically; returns the manifest, whose counts say
    how many images the source had (`n_in`), how many were lost and why (`images_lost_by_reason`:
    the four reasons partition the rest), and the same for rating rows. Missing path →
    UserError saying how to get LAPIS.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(_not_found_message(path, password_env))
    archive = _Archive(path, password_env)
    try:
        try:
            annotation = find_ratings_table(archive)
        except UserError as err:
            if any(PurePosixPath(n).suffix.lower() in TABLE_SUFFIXES and not is_junk(n) for n in archive.names):
                raise  # a table is there but wrong: the message says what to fix
            raise UserError(f"{err} {_not_found_message(path, password_env)}") from None
        images: dict[str, str] = {}  # base name → member, first in sorted order wins
        n_ignored = 0
        for name in archive.names:
            if "images" in PurePosixPath(name).parts[:-1]:
                if is_junk(name):
                    n_ignored += 1
                else:
                    images.setdefault(PurePosixPath(name).name, name)
        ratings = aggregate_ratings(read_ratings_table(archive, annotation), set(images), source=annotation)
        per_image = ratings.per_image
        if per_image.empty:
            raise UserError(
                f"{path}: no rated image of {annotation} was found under an images/ folder "
                f"(rating rows skipped: {ratings.rows_skipped}). Check that images/ holds the files the table names."
            )
        unnamed = set(images) - ratings.named
        image_suffixes = set(Image.registered_extensions())
        unrated = {b for b in unnamed if PurePosixPath(b).suffix.lower() in image_suffixes}
        n_ignored += len(unnamed - unrated)  # not an image and not named by the table (notes.txt, ...)
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
                                           score=float(row["score"]), n_ratings=int(row["n_ratings"]),
                                           lapis_image_id=_optional_int(row["lapis_image_id"])))
            n_ratings = int(per_image.loc[names, "n_ratings"].sum())
            manifest = write_records_and_manifest(
                tmp,
                records,
                source="lapis",
                # the path and the variable's NAME only: never the password itself
                params={"path": str(path), "password_env": password_env, "max_images": max_images, "annotation": annotation},
                counts={
                    # images: named by the table or lying in images/ = n_images + every loss below
                    "n_in": len(ratings.named | unrated),
                    "images_lost_by_reason": {
                        "missing_image": len(ratings.named - set(images)),  # rated, but not in images/
                        "no_valid_rating": len((ratings.named & set(images)) - set(per_image.index)),
                        "unrated_image": len(unrated),  # in images/, not in the table
                        "over_max_images": len(per_image) - len(names),
                    },
                    "n_ignored_files": n_ignored,  # OS litter and non-image files in images/ the table never names
                    # rating rows: n_rating_rows = n_ratings (behind the images kept) + every skip below
                    "n_rating_rows": ratings.n_rows,
                    "n_ratings": n_ratings,
                    "rating_rows_skipped_by_reason": {
                        **ratings.rows_skipped,
                        "over_max_images": int(per_image["n_ratings"].sum()) - n_ratings,
                    },
                },
            )
        return manifest
    finally:
        archive.close()
