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
    ("Impressionism/monet_b.jpg", "n/a", "Impressionism", "landscape"),
    ("Impressionism/monet_b.jpg", 71, "Impressionism", "landscape"),
    ("Rococo/boucher_c.jpg", 90, "Rococo", "nude painting"),
    ("Rococo/boucher_c.jpg", 80, "Baroque", "nude painting"),
    ("Rococo/boucher_c.jpg", 70, "Rococo", "nude painting"),
    ("Rococo/boucher_c.jpg", 60, "Rococo", "nude painting"),
    ("Realism/not_in_images.jpg", 55, "Realism", "cityscape"),
]
# what the rows above must aggregate to (worked out by hand)
LAPIS_EXPECTED = {
    "rembrandt_a": {"score": 25.0, "n_ratings": 3, "style": "Baroque", "genre": "portrait"},
    "monet_b": {"score": 60.5, "n_ratings": 2, "style": "Impressionism", "genre": "landscape"},
    "boucher_c": {"score": 75.0, "n_ratings": 4, "style": "Rococo", "genre": "nude painting"},
}


def lapis_table(file_column: str = "file") -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i, (file, response, style, genre) in enumerate(LAPIS_ROWS):
        row = {"participant_id": 100 + i % 4, "image_id": 7000 + len(file), file_column: file,
               "response": response, "style": style, "genre": genre}
        row.update({c: int(rng.integers(1, 7)) for c in DEMOGRAPHIC_COLUMNS})
        rows.append(row)
    return pd.DataFrame(rows)


def write_lapis_folder(root: Path, *, file_column: str = "file", excel: bool = False) -> Path:
    """A LAPIS-layout folder: annotation/LAPIS_individualratings_metaANDdemodata.{csv,xlsx} + images/."""
    (root / "annotation").mkdir(parents=True)
    (root / "images").mkdir()
    for i, stem in enumerate(LAPIS_EXPECTED):
        gradient_rgb(48, 36, seed=i).save(root / "images" / f"{stem}.jpg", format="JPEG")
    gradient_rgb(20, 20, seed=9).save(root / "images" / "unrated.jpg", format="JPEG")
    table = lapis_table(file_column)
    name = root / "annotation" / "LAPIS_individualratings_metaANDdemodata"
    if excel:
        table.to_excel(name.with_suffix(".xlsx"), index=False, engine="openpyxl")
    else:
        table.to_csv(name.with_suffix(".csv"), index=False)
    return root
