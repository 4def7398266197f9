"""Decode, validate and normalise one image file: every failure becomes a named skip reason.

`load_rgb` refuses an empty, non-image, corrupt, truncated or oversized file with
`ImageRejected(reason)`; the size check reads only the header, so a decompression bomb is never
decoded. Any mode (CMYK, palette, alpha, 16-bit, grayscale, ...) comes back as 8-bit RGB.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# PIL's own default: ~89.5 M pixels (a 0.25 GB RGB image); larger files are refused unread.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

# Signatures of the formats PIL reads most often: a file that starts like one but does not
# decode is "corrupt"; anything else PIL cannot identify is "not_an_image".
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageRejected(Exception):
    """An image file that cannot be used; `reason` is a short key for counting skips."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _looks_like_image(head: bytes) -> bool:
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


@contextlib.contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """PIL's bomb check at our limit: above it, Image.open raises (warnings are made errors).

    Image.MAX_IMAGE_PIXELS is a module global, so it is set for the duration and restored.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _classify_os_error(err: Exception) -> str:
    text = str(err).lower()
    return "truncated" if isinstance(err, EOFError) or "truncat" in text else "corrupt"


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB: alpha is composited on white, 16-bit is scaled (not clipped) to 8-bit."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT_MODES:
        # PIL's convert("L") clips 16-bit values at 255 (a white image); scale 0..65535 → 0..255.
        # Mode "I" (32-bit ints) comes from 16-bit PNG/TIFF files, so it is read as 16-bit too.
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = np.nan_to_num(values)
        scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0  # [0, 1] floats or already 0..255
        return Image.fromarray(np.clip(np.round(values * scale), 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "1":
        image = image.convert("L")
    return image.convert("RGB")  # L, CMYK, YCbCr, RGBX, ...


def load_rgb(
    path: str | Path, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, min_side: int | None = None
) -> Image.Image:
    """Decode `path` to an 8-bit RGB image (first frame, EXIF orientation applied).

    Raises ImageRejected with reason: missing_file, empty, not_an_image, too_large (more than
    `max_image_pixels` pixels per the header: nothing is decoded), truncated, corrupt or
    unsupported_mode. `min_side`, if given, lets JPEG decode at a reduced scale (DCT scaling)
    while keeping the shorter side at least `min_side` pixels: much faster for large photos.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageRejected("missing_file", str(path)) from None
    if size == 0:
        raise ImageRejected("empty", str(path))
    with open(path, "rb") as f:
        head = f.read(16)
    try:
        with _pixel_limit(max_image_pixels), Image.open(path) as image:
            width, height = image.size
            if width < 1 or height < 1:
                raise ImageRejected("corrupt", f"{path}: size {width}x{height}")
            if width * height > max_image_pixels:
                raise ImageRejected("too_large", f"{path}: {width}x{height} > {max_image_pixels} pixels")
            if min_side:
                short = min(width, height)
                image.draft(None, (-(-min_side * width // short), -(-min_side * height // short)))
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageRejected("too_large", f"{path}: {err}") from None
    except UnidentifiedImageError:
        raise ImageRejected("corrupt" if _looks_like_image(head) else "not_an_image", str(path)) from None
    except (OSError, EOFError, SyntaxError, ValueError, IndexError, TypeError, struct.error) as err:
        if isinstance(err, ValueError) and "conversion" in str(err).lower():
            raise ImageRejected("unsupported_mode", f"{path}: {err}") from None
        raise ImageRejected(_classify_os_error(err), f"{path}: {err}") from None


def center_square_resize(image: Image.Image, size: int) -> Image.Image:
    """Center-crop to a square and resize to size×size with Lanczos (one resampling pass)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return image.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side), reducing_gap=3.0)


# zlib level 1: ~3x faster than PIL's default 6 on painting-like images, files ~10% larger.
PNG_COMPRESS_LEVEL = 1


def png_encode(image: Image.Image) -> bytes:
    """PNG bytes with fixed settings and no metadata: the same pixels always give the same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
