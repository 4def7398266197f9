"""Any folder of images → raw layout, with optional `metadata.csv` (HF imagefolder's convention).

Every file under the folder (recursively; hidden files, `__MACOSX/`, `Thumbs.db` and
`desktop.ini` excepted) is taken as-is; preprocess
decides which ones are images. `metadata.csv` at the top may give, per `file_name` (a path
relative to the folder), any of: caption, style, genre, score, n_ratings. Unknown style and
genre strings are kept as given.
"""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

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

METADATA_NAME = "metadata.csv"
METADATA_COLUMNS = ("file_name", "caption", "style", "genre", "score", "n_ratings")


def _text(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def _number(value: str | None, kind: type) -> tuple[Any, bool]:
    """(parsed value or None, whether a non-empty value failed to parse)."""
    text = _text(value)
    if text is None:
        return None, False
    try:
        number = float(text)
    except ValueError:
        return None, True
    if not math.isfinite(number):
        return None, True
    return (kind(number) if kind is int else number), False


def _relative_key(name: str) -> str:
    """A metadata file_name as the POSIX relative path it names ("./a\\b.jpg" → "a/b.jpg")."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return PurePosixPath(name).as_posix()


def read_metadata(path: Path) -> tuple[dict[str, dict[str, str]], list[str]]:
    """metadata.csv → ({file_name as a POSIX relative path: row}, unknown column names)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "file_name" not in columns:
            raise UserError(f"{path}: needs a file_name column (paths relative to the folder); found columns: {columns}")
        rows = {}
        for row in reader:
            row = {(k or "").strip(): v for k, v in row.items()}
            name = _text(row.get("file_name"))
            if name:
                rows[_relative_key(name)] = row
    return rows, [c for c in columns if c not in METADATA_COLUMNS]


def fetch_folder(out_dir: str | Path, *, path: str | Path, max_images: int | None = None) -> dict[str, Any]:
    """Copy every file under `path` (recursive, as-is) plus its metadata into the raw layout at `out_dir`.

    `max_images` keeps a fixed subset (by a hash of the relative path). Metadata rows naming
    no file are counted as lost images (`missing_image`); unparsable scores become null and are counted.
    Writes `out_dir` atomically; returns the manifest.
    """
    root = Path(path)
    if not root.is_dir():
        raise UserError(
            f"image folder '{root}' does not exist or is not a folder: set `data.folder_path` to a folder of images"
        )
    metadata_path = root / METADATA_NAME
    metadata, extra_columns = read_metadata(metadata_path) if metadata_path.is_file() else ({}, [])
    every = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    files = [f for f in every if not is_junk(f) and f != METADATA_NAME]
    if not files:
        raise UserError(f"image folder '{root}' holds no files: put images there (any depth) or fix `data.folder_path`")
    n_found = len(files)
    n_missing = len(set(metadata) - set(files))  # named in metadata.csv, not in the folder
    n_in = n_found + n_missing
    if max_images is not None and len(files) > max_images:
        files = sorted(sorted(files, key=lambda f: hash_fraction(f, 0))[:max_images])
    ids = unique_image_ids(files)
    invalid_numbers = 0
    records = []
    with raw_output(out_dir) as tmp:
        for rel in tqdm(files, desc="folder images", unit="file"):
            meta = metadata.get(rel, {})
            score, bad_score = _number(meta.get("score"), float)
            n_ratings, bad_count = _number(meta.get("n_ratings"), int)
            invalid_numbers += bad_score + bad_count
            suffix = Path(rel).suffix.lower()
            target = f"{IMAGES_DIR}/{ids[rel]}{suffix}"
            shutil.copyfile(root / rel, tmp / target)
            records.append(make_record(
                ids[rel], target,
                style=_text(meta.get("style")), genre=_text(meta.get("genre")), caption=_text(meta.get("caption")),
                score=score, n_ratings=n_ratings,
            ))
        manifest = write_records_and_manifest(
            tmp,
            records,
            source="folder",
            params={"path": str(root), "max_images": max_images},
            counts={
                "n_in": n_in,  # = n_images + every loss below
                "images_lost_by_reason": {
                    "missing_image": n_missing,
                    "over_max_images": n_found - len(files),
                },
                "n_ignored_files": len(every) - n_found - (METADATA_NAME in every),  # hidden files, Thumbs.db, ...
                "n_files_found": n_found,
                "n_with_metadata": sum(1 for f in files if f in metadata),
                "n_invalid_numbers": int(invalid_numbers),
                "ignored_metadata_columns": extra_columns,
            },
        )
    return manifest
