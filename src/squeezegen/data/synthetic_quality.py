"""What the synthetic raters like, and how it shows: per-image quality factors.

Every synthetic image draws four factors, each uniform in [-1, 1] (+1 is what raters prefer):

- `harmony`  — palette harmony: low harmony turns the two accent colours towards garish, clashing hues
  (the mid tone a little; the dark, deep and light tones that carry the style's palette stay);
- `balance`  — compositional balance: low balance tilts the composition and pushes it off centre;
- `clutter`  — high clutter scatters small stray marks (ink ticks, dots, scribbles) over the finished painting
  (a minus for raters), each dark on light ground or light on dark, so they read at any palette;
- `contrast` — tonal contrast: low contrast washes the painting out towards its mean grey.

Each factor visibly changes the pixels and moves the mean score by `SCORE_WEIGHTS` points per
unit, so the score can be read from the image (within a style, not only across styles). The
factors have mean zero, so every style's and genre's mean score stays what `synthetic_styles`
says; the raters' own noise (`synthetic.RATER_SD`) is unchanged.
"""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from squeezegen.data.synthetic_compose import DARK, LIGHT, rgb

# Score points per unit of each factor (a factor spans [-1, 1], so each moves the score by up to ±weight).
# Sized so that the visible part of the score (std ≈ 10 points) dominates the invisible taste and the
# rater noise; the factors a small CNN reads most easily (contrast, clutter: whole-image statistics)
# weigh most, the subtler ones (accent hues, tilt) less.
SCORE_WEIGHTS: dict[str, float] = {"harmony": 5.0, "balance": 3.0, "clutter": -12.0, "contrast": 12.0}
TASTE_SD = 3.0  # the part of an image's mean score no pixel shows (each rater pool's own taste)
MAX_TILT_DEG = 16.0  # balance -1: the composition is tilted by this much…
MAX_SHIFT = 0.14  # …and shifted off centre by this fraction of the side
MAX_MARKS = 90  # clutter +1: this many stray marks (linear in the factor)
MARK_SIZE = (0.02, 0.05)  # a mark's size, as a fraction of the side
MIN_CONTRAST, MAX_CONTRAST = 0.25, 1.15  # contrast -1 / +1 keep this fraction of the deviations from the mean


@dataclass(frozen=True, kw_only=True)
class Quality:
    """One image's quality factors, each in [-1, 1]; +1 is what the raters prefer (see module doc)."""

    harmony: float = 0.0
    balance: float = 0.0
    clutter: float = 0.0
    contrast: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 6) for k, v in asdict(self).items()}


NEUTRAL = Quality()


def draw_quality(rng: np.random.Generator) -> Quality:
    """Four independent factors, uniform in [-1, 1] (mean zero, so style and genre means are kept)."""
    h, b, c, k = rng.uniform(-1.0, 1.0, 4).tolist()
    return Quality(harmony=h, balance=b, clutter=c, contrast=k)


def quality_score_offset(quality: Quality) -> float:
    """How much the factors move the image's mean score (points on the 0-100 scale)."""
    return float(sum(weight * getattr(quality, name) for name, weight in SCORE_WEIGHTS.items()))


# ------------------------------------------------------------------------------------ looks


def clash_palette(palette: np.ndarray, harmony: float) -> np.ndarray:
    """The palette (6, 3) with its accents (4, 5), and a little its mid tone (2), rotated towards clashing hues.

    harmony +1 leaves it alone; at -1 the accents turn by up to 150° (towards the complement of
    the palette) and are pushed to full saturation, the mid tone by 0.3 of that (45°): the mid tone
    covers much of the canvas and carries the style's palette, which must stay recognizable at
    any harmony (at 0.5, 75°, Cubism's ochres passed for Realism's and New Realism's for Mannerism's).
    """
    disharmony = (1.0 - harmony) / 2.0  # 0 (harmonious) … 1 (clashing)
    out = palette.copy()
    for index, share in ((4, 1.0), (5, 1.0), (2, 0.3)):
        h, s, v = colorsys.rgb_to_hsv(*out[index].tolist())
        h = (h + share * disharmony * 150.0 / 360.0) % 1.0
        s = s + share * disharmony * (1.0 - s) * 0.8
        v = max(v, 0.35 + 0.5 * share * disharmony)
        out[index] = colorsys.hsv_to_rgb(h, s, min(v, 1.0))
    return out.astype(np.float32)


def unbalance(base: np.ndarray, balance: float, rng: np.random.Generator) -> np.ndarray:
    """Tilt the composition (S, S, 3) and shift it off centre, more as balance falls; +1 leaves it.

    The canvas is reflect-padded first, so the edges show mirrored content (no empty wedges).
    Draws the same number of random numbers whatever `balance` is.
    """
    s = base.shape[0]
    amount = (1.0 - balance) / 2.0  # 0 … 1
    sign, direction = (1.0 if rng.random() < 0.5 else -1.0), rng.uniform(0.0, 2.0 * np.pi)
    if amount < 1e-3:
        return base
    pad = s // 2
    padded = np.pad(base, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")  # (S + 2·pad, S + 2·pad, 3)
    image = Image.fromarray((np.clip(padded, 0, 1) * 255 + 0.5).astype(np.uint8))
    image = image.rotate(sign * amount * MAX_TILT_DEG, resample=Image.Resampling.BILINEAR)
    dx, dy = (amount * MAX_SHIFT * s * np.array([np.cos(direction), np.sin(direction)])).round().astype(int).tolist()
    left, top = pad - dx, pad - dy  # the view moves against the content: content slides by (dx, dy)
    crop = image.crop((left, top, left + s, top + s))
    return np.asarray(crop, np.float32) / 255.0


def add_clutter(image: np.ndarray, clutter: float, palette: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scatter small stray marks (ticks, dots, scribbles) over the painting (S, S, 3).

    Their number grows from 0 (clutter -1) to MAX_MARKS (clutter +1). Each mark is the palette's
    dark tone where the painting under it is light and its light tone where it is dark, so the
    marks stand out from any style (and hide little of it: they are small). Random positions come
    from `rng` in a fixed amount per call, so clutter changes the marks, not the rest of the image.
    """
    s = image.shape[0]
    n = int(round((clutter + 1.0) / 2.0 * MAX_MARKS))
    xy = rng.uniform(0, s, (MAX_MARKS, 4))  # (MAX_MARKS, 4): a start and an end point per mark
    kinds = rng.integers(0, 3, MAX_MARKS)
    sizes = rng.uniform(MARK_SIZE[0], MARK_SIZE[1], MAX_MARKS) * s
    if n == 0:
        return image
    lum = image @ np.array([0.299, 0.587, 0.114], np.float32)  # (S, S)
    ink, paper = rgb(palette[DARK] * 0.6), rgb(np.maximum(palette[LIGHT], 0.85))
    pil = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    width = max(1, s // 64)
    for (x0, y0, x1, y1), kind, r in zip(xy[:n].tolist(), kinds[:n].tolist(), sizes[:n].tolist()):
        fill = ink if lum[min(int(y0), s - 1), min(int(x0), s - 1)] > 0.45 else paper
        if kind == 0:  # a short tick
            ex, ey = x0 + (x1 - x0) * 0.08, y0 + (y1 - y0) * 0.08
            draw.line((x0, y0, ex, ey), fill=fill, width=width)
        elif kind == 1:  # a dot
            draw.ellipse((x0 - r * 0.6, y0 - r * 0.6, x0 + r * 0.6, y0 + r * 0.6), fill=fill)
        else:  # a zig-zag scribble
            pts = [(x0 + i * r * 0.6, y0 + (r if i % 2 else -r) * 0.6) for i in range(4)]
            draw.line(pts, fill=fill, width=width)
    return np.asarray(pil, np.float32) / 255.0


def wash_out(image: np.ndarray, contrast: float) -> np.ndarray:
    """Scale the deviations from the image's mean colour: ×MIN_CONTRAST at -1 up to ×MAX_CONTRAST at +1."""
    factor = MIN_CONTRAST + (MAX_CONTRAST - MIN_CONTRAST) * (contrast + 1.0) / 2.0
    mean = image.mean(axis=(0, 1), keepdims=True)  # (1, 1, 3)
    return np.clip(mean + (image - mean) * factor, 0.0, 1.0)
