"""A synthetic LAPIS-shaped art set: offline, seeded, byte-for-byte reproducible.

Every image is a genre composition (synthetic_compose) painted in a style (synthetic_brush,
synthetic_styles), so both style and genre are visible, with its own quality factors
(synthetic_quality: palette harmony, balance, clutter, contrast) that change how it looks. Scores
come from simulated raters whose mean depends mildly on style and genre and strongly on those
visible factors. Writes the raw layout described in `raw.py`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from squeezegen.data.captions import GENRES, STYLES
from squeezegen.data.images import png_encode
from squeezegen.data.raw import IMAGES_DIR, make_record, raw_output, write_records_and_manifest
from squeezegen.data.synthetic_brush import paint
from squeezegen.data.synthetic_compose import COMPOSERS
from squeezegen.data.synthetic_quality import (
    NEUTRAL,
    TASTE_SD,
    Quality,
    clash_palette,
    draw_quality,
    quality_score_offset,
    unbalance,
)
from squeezegen.data.synthetic_styles import GENRE_SCORE_OFFSET, STYLE_LOOKS, palette_array
from squeezegen.errors import UserError

# Strokes and outlines are drawn at no less than this many pixels, then downsampled (antialiasing).
MIN_RENDER_SIZE = 128
RATER_SD = 18.0  # spread of one simulated rating around the image's mean (0-100 scale)


def render_painting(
    style: str, genre: str, size: int, rng: np.random.Generator, *, quality: Quality = NEUTRAL
) -> np.ndarray:
    """One synthetic painting, uint8 (size, size, 3); the same rng state and quality give the same pixels.

    The quality effects draw from their own generator (seeded from `rng` first thing), so two
    renderings that differ only in `quality` share everything else: the layout, the brushwork.
    """
    look = STYLE_LOOKS[style]
    render = max(size, MIN_RENDER_SIZE)
    effects_rng = np.random.default_rng(rng.integers(0, 2**63))
    palette = np.clip(palette_array(look) * (1 + rng.normal(0, 0.05, (6, 3))), 0, 1).astype(np.float32)  # (6, 3)
    palette = clash_palette(palette, quality.harmony)
    base = COMPOSERS[genre](render, palette, rng)  # (R, R, 3)
    base = unbalance(base, quality.balance, effects_rng)
    painted = paint(base, look, palette, rng, quality=quality, marks_rng=effects_rng)  # (R, R, 3) in [0, 1]
    image = Image.fromarray((painted * 255 + 0.5).astype(np.uint8))
    if render != size:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image)


def simulate_ratings(
    style: str, genre: str, rng: np.random.Generator, *, quality: Quality = NEUTRAL
) -> tuple[float, int]:
    """(mean score 0-100, number of raters 20-28) from simulated raters.

    The image's mean is its style's mean + its genre's offset + what its visible quality factors
    are worth + a little invisible taste; each rater adds RATER_SD of noise around it.
    """
    n_ratings = int(rng.integers(20, 29))
    taste = rng.normal(0, TASTE_SD)
    image_mean = STYLE_LOOKS[style].mean_score + GENRE_SCORE_OFFSET[genre] + quality_score_offset(quality) + taste
    ratings = np.clip(np.round(rng.normal(image_mean, RATER_SD, n_ratings)), 0, 100)
    return round(float(ratings.mean()), 4), n_ratings


def style_genre_plan(num_images: int, seed: int) -> list[tuple[str, str]]:
    """(style, genre) per image: every pair once per round of 26×7 images, in a seeded order."""
    pairs = [(style, genre) for style in STYLES for genre in GENRES]
    rng = np.random.default_rng([seed, 0x5EED])
    rounds = math.ceil(num_images / len(pairs))
    order = np.concatenate([rng.permutation(len(pairs)) for _ in range(rounds)])[:num_images]
    return [pairs[i] for i in order.tolist()]


def generate_synthetic(out_dir: str | Path, *, num_images: int, image_size: int, seed: int) -> dict[str, Any]:
    """Write `num_images` synthetic paintings of `image_size`² px as the raw layout at `out_dir`.

    Deterministic: the same (num_images, image_size, seed) gives identical files. Image i is
    `images/syn<i:06d>.png`; its pixels depend only on (seed, i, image_size), so a larger
    num_images keeps the first images unchanged. Writes `out_dir` atomically; returns the manifest.
    """
    if num_images < 1:
        raise UserError(f"num_images must be at least 1, got {num_images}")
    if image_size < 8:
        raise UserError(f"image_size must be at least 8 pixels, got {image_size}")
    plan = style_genre_plan(num_images, seed)
    records = []
    with raw_output(out_dir) as tmp:
        for index, (style, genre) in enumerate(tqdm(plan, desc="synthetic images", unit="img")):
            image_id = f"syn{index:06d}"
            quality = draw_quality(np.random.default_rng([seed, index, 2]))
            pixels = render_painting(style, genre, image_size, np.random.default_rng([seed, index]), quality=quality)
            rel = f"{IMAGES_DIR}/{image_id}.png"
            (tmp / rel).write_bytes(png_encode(Image.fromarray(pixels)))
            score, n_ratings = simulate_ratings(style, genre, np.random.default_rng([seed, index, 1]), quality=quality)
            records.append(make_record(image_id, rel, style=style, genre=genre, score=score, n_ratings=n_ratings))
        manifest = write_records_and_manifest(
            tmp,
            records,
            source="synthetic",
            params={"num_images": num_images, "image_size": image_size, "seed": seed},
            counts={"n_in": num_images, "images_lost_by_reason": {}},
        )
    return manifest


def contact_sheet(
    images: Sequence[Image.Image | np.ndarray],
    ncols: int,
    *,
    labels: Sequence[str] | None = None,
    pad: int = 2,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Tile images (PIL or uint8 arrays) into a grid `ncols` wide; each cell is the first image's size.

    With `labels`, a line of text is written under each image (PIL's default font).
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    tiles = [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)) for im in images]
    w, h = tiles[0].size
    label_h = 12 if labels else 0
    ncols = max(1, min(ncols, len(tiles)))
    nrows = math.ceil(len(tiles) / ncols)
    sheet = Image.new("RGB", (ncols * (w + pad) + pad, nrows * (h + pad + label_h) + pad), background)
    draw = ImageDraw.Draw(sheet)
    for i, tile in enumerate(tiles):
        x, y = pad + (i % ncols) * (w + pad), pad + (i // ncols) * (h + pad + label_h)
        sheet.paste(tile.convert("RGB").resize((w, h)) if tile.size != (w, h) else tile.convert("RGB"), (x, y))
        if labels:
            draw.text((x, y + h), labels[i], fill=(0, 0, 0))
    return sheet
