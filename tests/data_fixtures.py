"""Builders of small on-disk inputs for the data-layer tests (bad images, a LAPIS-shaped archive)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

DEMOGRAPHIC_COLUMNS = (
    ["age", "nationality", "demo_gender", "demo_edu", "demo_colorblind"]
    + [f"VAIAK{i}" for i in range(1, 8)]
    + [f"2VAIAK{i}" for i in range(1, 5)]
)


def gradient_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth colour image (not a flat one, so resampling bugs would show)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    base = rng.uniform(0.2, 0.8, 3)
    pixels = np.stack([base[0] + 0.2 * xx, base[1] + 0.2 * yy, base[2] - 0.2 * xx * yy], axis=-1)
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width×height (1-bit grayscale) with a token IDAT: nothing big is allocated."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def write_bad_image_folder(root: Path) -> dict[str, str]:
    """A folder holding one file per awkward case; returns {file name: expected outcome}.

    Outcome is a skip reason, or "ok" for files preprocess must convert to RGB.
    """
    root.mkdir(parents=True, exist_ok=True)
    good = jpeg_bytes(gradient_rgb(40, 30))
    corrupt = bytearray(good)
    corrupt[4:64] = b"\x00" * 60  # JPEG signature kept, headers wiped
    (root / "corrupt.jpg").write_bytes(bytes(corrupt))
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_text("this is not an image\n")
    (root / "bomb.png").write_bytes(png_header_only(20000, 20000))
    cmyk = Image.new("CMYK", (24, 20), (0, 255, 255, 0))  # pure red in print colours
    cmyk.save(root / "cmyk.jpg", format="JPEG", quality=95)
    Image.fromarray(np.full((20, 24), 128 * 257, np.uint16)).save(root / "gray16.png")  # 16-bit mid grey
    Image.new("RGBA", (24, 20), (10, 200, 30, 0)).save(root / "transparent.png")  # fully transparent
    palette = gradient_rgb(24, 20).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(root / "palette.png")
    Image.new("L", (30, 24), 77).save(root / "gray.png")
    nested = root / "sub" / "deeper"
    nested.mkdir(parents=True)
    (nested / "ok.jpg").write_bytes(good)
    return {
        "corrupt.jpg": "corrupt", "truncated.jpg": "truncated", "empty.jpg": "empty", "notes.png": "not_an_image",
        "bomb.png": "too_large", "cmyk.jpg": "ok", "gray16.png": "ok", "transparent.png": "ok",
        "palette.png": "ok", "gray.png": "ok", "sub/deeper/ok.jpg": "ok",
    }


# (file as written in the ratings table, response, style, genre) for the LAPIS fixture
LAPIS_ROWS = [
    ("Baroque/rembrandt_a.jpg", 10, "Baroque", "portrait"),
    ("Baroque/rembrandt_a.jpg", 20, "Baroque", "portrait"),
    ("Baroque/rembrandt_a.jpg", 45, "Baroque", "portrait"),
    ("Impressionism/monet_b.jpg", 50, "Impressionism", "landscape"),
    ("Impressionism/monet_b.jpg", None, "Impressionism", "landscape"),  # a blank response
    ("Impressionism/monet_b.jpg", "seventy", "Impressionism", "landscape"),  # not a number
    ("Impressionism/monet_b.jpg", 71, "Impressionism", "landscape"),
    ("Rococo/boucher_c.jpg", 90, "Rococo", "nude painting"),
    ("Rococo/boucher_c.jpg", 80, "Baroque", "nude painting"),
    ("Rococo/boucher_c.jpg", 70, "Rococo", "nude painting"),
    ("Rococo/boucher_c.jpg", 60, "Rococo", "nude painting"),
    ("Rococo/boucher_c.jpg", 101, "Rococo", "nude painting"),  # out of range
    ("Realism/not_in_images.jpg", 55, "Realism", "cityscape"),  # rated, but missing from images/ (3 rows)
    ("Realism/not_in_images.jpg", 65, "Realism", "cityscape"),
    ("Realism/not_in_images.jpg", 75, "Realism", "cityscape"),
]
# LAPIS's own numeric image ids (the table's image_id column), by image
LAPIS_IDS = {"rembrandt_a": 1201, "monet_b": 3402, "boucher_c": 5603, "not_in_images": 7804}
# what the rows above must aggregate to (worked out by hand)
LAPIS_EXPECTED = {
    "rembrandt_a": {"score": 25.0, "n_ratings": 3, "style": "Baroque", "genre": "portrait", "lapis_image_id": 1201},
    "monet_b": {"score": 60.5, "n_ratings": 2, "style": "Impressionism", "genre": "landscape", "lapis_image_id": 3402},
    "boucher_c": {"score": 75.0, "n_ratings": 4, "style": "Rococo", "genre": "nude painting", "lapis_image_id": 5603},
}
# what the fetch step must count for the fixture (images and rating rows lost, by reason)
LAPIS_LOSSES = {
    "n_in": 5,  # 3 rated + not_in_images + unrated.jpg (Thumbs.db, .DS_Store and notes.txt are no images)
    "images_lost_by_reason": {"missing_image": 1, "no_valid_rating": 0, "unrated_image": 1, "over_max_images": 0},
    "n_ignored_files": 3,
    "n_rating_rows": len(LAPIS_ROWS),
    "n_ratings": 9,
    "rating_rows_skipped_by_reason": {
        "blank_file": 0, "blank_response": 1, "non_numeric_response": 1, "response_out_of_range": 1,
        "missing_image": 3, "over_max_images": 0,
    },
}
LAPIS_TABLE = "annotation/LAPIS_individualratings_metaANDdemodata"


def lapis_table(file_column: str = "file") -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i, (file, response, style, genre) in enumerate(LAPIS_ROWS):
        image_id = LAPIS_IDS[file.rsplit("/", 1)[-1].rsplit(".", 1)[0]]
        row = {"participant_id": 100 + i % 4, "image_id": image_id, file_column: file,
               "response": response, "style": style, "genre": genre}
        row.update({c: int(rng.integers(1, 7)) for c in DEMOGRAPHIC_COLUMNS})
        rows.append(row)
    return pd.DataFrame(rows)


def write_table(table: pd.DataFrame, path: Path) -> Path:
    """`table` as .csv or .xlsx, by the suffix of `path` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".xlsx":
        table.to_excel(path, index=False, engine="openpyxl")
    else:
        table.to_csv(path, index=False)
    return path


def write_lapis_folder(
    root: Path, *, file_column: str = "file", excel: bool = False, table_name: str = LAPIS_TABLE
) -> Path:
    """A LAPIS-layout folder: the ratings table at `table_name` (.csv, or .xlsx if `excel`) + images/.

    images/ also holds an unrated painting, OS litter (Thumbs.db, .DS_Store) and a text file.
    """
    (root / "images").mkdir(parents=True)
    for i, stem in enumerate(LAPIS_EXPECTED):
        gradient_rgb(48, 36, seed=i).save(root / "images" / f"{stem}.jpg", format="JPEG")
    gradient_rgb(20, 20, seed=9).save(root / "images" / "unrated.jpg", format="JPEG")
    (root / "images" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 thumbnail cache")
    (root / "images" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "images" / "notes.txt").write_text("scanned at 600 dpi\n")
    write_table(lapis_table(file_column), root / f"{table_name}.{'xlsx' if excel else 'csv'}")
    return root
