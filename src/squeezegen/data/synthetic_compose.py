"""Genre compositions for the synthetic art set: the layout of a picture before brushwork.

Each `compose_<genre>(size, palette, rng)` returns a float32 (size, size, 3) array in [0, 1],
drawn with PIL's ImageDraw in the style's palette (dark, deep, mid, light, accent, accent):
a landscape is a sky gradient over a horizon and hills, a portrait a face oval over shoulders,
a cityscape vertical blocks with windows, a still life objects on a table, a flower painting
radial petals over stems and a vase, a nude soft reclining curves, an abstract free shapes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DARK, DEEP, MID, LIGHT, ACCENT, ACCENT2 = range(6)
SKIN = np.array([0.86, 0.66, 0.52], np.float32)
LEAF = np.array([0.22, 0.45, 0.22], np.float32)


def mix(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Linear blend of two colours (t=0 → a, t=1 → b)."""
    return np.asarray(a, np.float32) * (1 - t) + np.asarray(b, np.float32) * t


def rgb(color: np.ndarray) -> tuple[int, int, int]:
    """A float colour in [0, 1] as a PIL RGB tuple."""
    r, g, b = (np.clip(color, 0, 1) * 255 + 0.5).astype(np.int32).tolist()
    return (r, g, b)


def jitter(rng: np.random.Generator, color: np.ndarray, amount: float = 0.06) -> np.ndarray:
    """The colour with a little random variation per channel."""
    return np.clip(color * (1 + rng.normal(0, amount, 3)) + rng.normal(0, amount / 3, 3), 0, 1)


def vertical_gradient(size: int, top: np.ndarray, bottom: np.ndarray, y0: float = 0.0, y1: float = 1.0) -> np.ndarray:
    """(size, size, 3) gradient from `top` at row y0·size to `bottom` at row y1·size."""
    t = np.clip((np.arange(size, dtype=np.float32) / size - y0) / max(y1 - y0, 1e-6), 0, 1)  # (size,)
    column = mix(top, bottom, t[:, None])  # (size, 3)
    return np.broadcast_to(column[:, None, :], (size, size, 3)).copy()


def to_image(array: np.ndarray) -> Image.Image:
    """Float (H, W, 3) array in [0, 1] → PIL RGB image."""
    return Image.fromarray((np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8))


def to_array(image: Image.Image) -> np.ndarray:
    """PIL RGB image → float32 (H, W, 3) array in [0, 1]."""
    return np.asarray(image, dtype=np.float32) / 255.0


def _ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill) -> None:
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)


def compose_landscape(size: int, pal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sky gradient over a horizon, a sun, layered hills (far ones hazier), sometimes water and trees."""
    s = size
    horizon = rng.uniform(0.38, 0.6)
    sky_top, sky_low = jitter(rng, mix(pal[LIGHT], pal[ACCENT2], 0.45)), jitter(rng, mix(pal[LIGHT], pal[ACCENT], 0.3))
    sky = vertical_gradient(s, sky_top, sky_low, 0, horizon)
    ground = vertical_gradient(s, pal[MID], pal[DARK] * 0.8 + pal[DEEP] * 0.2, horizon, 1.0)
    rows = (np.arange(s) < horizon * s)[:, None, None]
    image = to_image(np.where(rows, sky, ground))
    draw = ImageDraw.Draw(image)
    sun_r = rng.uniform(0.04, 0.08) * s
    sun = rgb(mix(pal[ACCENT], [1, 0.95, 0.8], 0.4))
    _ellipse(draw, rng.uniform(0.15, 0.85) * s, rng.uniform(0.1, 0.7) * horizon * s, sun_r, sun_r, sun)
    xs = np.linspace(-0.05, 1.05, 28) * s
    for layer in range(3):
        base_y = (horizon + 0.02 + layer * rng.uniform(0.08, 0.14)) * s
        amp = rng.uniform(0.03, 0.1) * s * (1.2 - 0.3 * layer)
        f1, f2 = rng.uniform(1.0, 3.0), rng.uniform(3.0, 7.0)
        p1, p2 = rng.uniform(0, 2 * np.pi, 2)
        ys = base_y - amp * (0.7 * np.sin(f1 * xs / s * np.pi + p1) + 0.3 * np.sin(f2 * xs / s * np.pi + p2))
        haze = 0.5 - 0.2 * layer
        color = jitter(rng, mix(mix(pal[MID], pal[DEEP], layer / 2), pal[LIGHT], haze), 0.05)
        draw.polygon([*zip(xs.tolist(), ys.tolist()), (xs[-1], s), (xs[0], s)], fill=rgb(color))
    if rng.random() < 0.4:  # a lake reflecting the sky
        top = (horizon + rng.uniform(0.18, 0.28)) * s
        draw.rectangle((0, top, s, top + rng.uniform(0.08, 0.15) * s), fill=rgb(mix(pal[LIGHT], pal[DEEP], 0.35)))
    for _ in range(int(rng.integers(0, 5))):  # trees: trunk + crown
        tx, ty = rng.uniform(0, 1) * s, rng.uniform(horizon + 0.15, 0.85) * s
        h = rng.uniform(0.1, 0.2) * s
        draw.rectangle((tx - 0.01 * s, ty - h * 0.4, tx + 0.01 * s, ty), fill=rgb(pal[DARK]))
        _ellipse(draw, tx, ty - h * 0.6, h * 0.3, h * 0.4, rgb(jitter(rng, mix(pal[DEEP], LEAF, 0.4))))
    return to_array(image)


def compose_portrait(size: int, pal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark background, shoulders, neck, hair and a central face oval with eyes and mouth."""
    s = size
    image = to_image(vertical_gradient(s, jitter(rng, mix(pal[DEEP], pal[MID], 0.3)), pal[DARK] * 0.9))
    draw = ImageDraw.Draw(image)
    skin = jitter(rng, mix(SKIN, pal[LIGHT], 0.35), 0.05)
    cx, cy = (0.5 + rng.uniform(-0.06, 0.06)) * s, rng.uniform(0.38, 0.46) * s
    fw, fh = rng.uniform(0.12, 0.15) * s, rng.uniform(0.16, 0.2) * s
    clothes = jitter(rng, pal[[ACCENT2, DEEP, ACCENT][int(rng.integers(3))]] * 0.8)
    _ellipse(draw, cx, s * 1.02, rng.uniform(0.36, 0.46) * s, 0.34 * s, rgb(clothes))
    draw.rectangle((cx - 0.055 * s, cy + 0.1 * s, cx + 0.055 * s, cy + fh + 0.12 * s), fill=rgb(skin * 0.85))
    hair = jitter(rng, mix(pal[DARK], pal[MID], rng.uniform(0, 0.6)))
    _ellipse(draw, cx, cy - 0.04 * s, fw * 1.2, fh * 1.05, rgb(hair))
    _ellipse(draw, cx, cy, fw, fh, rgb(skin))
    eye_y, eye_dx, eye_r = cy - 0.02 * s, 0.055 * s, 0.016 * s
    for side in (-1, 1):
        _ellipse(draw, cx + side * eye_dx, eye_y, eye_r * 1.3, eye_r, rgb(pal[DARK]))
    lips = rgb(mix(pal[ACCENT], [0.6, 0.1, 0.1], 0.5))
    draw.line((cx - 0.04 * s, cy + 0.1 * s, cx + 0.04 * s, cy + 0.1 * s), fill=lips, width=max(1, s // 60))
    return to_array(image)


def compose_cityscape(size: int, pal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sky gradient, a hazy back row and a front row of vertical blocks with lit windows, a street."""
    s = size
    image = to_image(vertical_gradient(s, jitter(rng, pal[LIGHT]), jitter(rng, mix(pal[LIGHT], pal[ACCENT], 0.4))))
    draw = ImageDraw.Draw(image)
    street = rng.uniform(0.78, 0.88) * s
    for row, haze in ((0, 0.55), (1, 0.0)):
        x = -rng.uniform(0, 0.05) * s
        while x < s:
            w = rng.uniform(0.07, 0.16) * s
            h = rng.uniform(0.3, 0.7) * s * (1.15 - 0.25 * row)
            color = jitter(rng, mix(pal[[DARK, DEEP, MID, ACCENT2][int(rng.integers(4))]], pal[LIGHT], haze))
            top = street - h
            draw.rectangle((x, top, x + w, street), fill=rgb(color))
            if row == 1:
                lit = rgb(mix(pal[ACCENT], pal[LIGHT], 0.5))
                ww, wh = w / 7, 0.03 * s
                for wy in np.arange(top + wh, street - 2 * wh, 2.2 * wh).tolist():
                    for wx in (x + ww, x + 3 * ww, x + 5 * ww):
                        if rng.random() < 0.7:
                            draw.rectangle((wx, wy, wx + ww, wy + wh), fill=lit)
            x += w + rng.uniform(-0.01, 0.03) * s
    draw.rectangle((0, street, s, s), fill=rgb(mix(pal[DARK], pal[MID], 0.3)))
    return to_array(image)


def compose_still_life(size: int, pal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A wall, a table top and front edge, a vase or bottle and round fruit with shadows and highlights."""
    s = size
    image = to_image(vertical_gradient(s, jitter(rng, mix(pal[DEEP], pal[MID], 0.5)), pal[DEEP]))
    draw = ImageDraw.Draw(image)
    table = rng.uniform(0.56, 0.68) * s
    wood = jitter(rng, mix(pal[DARK], np.array([0.55, 0.35, 0.2]), 0.5))
    draw.rectangle((0, table, s, s), fill=rgb(mix(wood, pal[LIGHT], 0.25)))
    draw.rectangle((0, table + 0.16 * s, s, s), fill=rgb(wood * 0.7))
    if rng.random() < 0.7:
        vx, vw = rng.uniform(0.3, 0.7) * s, rng.uniform(0.07, 0.11) * s
        vase = rgb(jitter(rng, pal[[LIGHT, ACCENT2, MID][int(rng.integers(3))]]))
        draw.rectangle((vx - vw * 0.4, table - 0.38 * s, vx + vw * 0.4, table - 0.1 * s), fill=vase)
        _ellipse(draw, vx, table - 0.08 * s, vw, 0.12 * s, vase)
    for _ in range(int(rng.integers(2, 5))):
        r = rng.uniform(0.05, 0.09) * s
        fx, fy = rng.uniform(0.15, 0.85) * s, table + rng.uniform(0.03, 0.12) * s - r * 0.5
        fruit = jitter(rng, pal[[ACCENT, ACCENT2, MID][int(rng.integers(3))]], 0.08)
        _ellipse(draw, fx + r * 0.3, fy + r * 0.8, r * 1.1, r * 0.3, rgb(wood * 0.5))
        _ellipse(draw, fx, fy, r, r, rgb(fruit))
        _ellipse(draw, fx - r * 0.35, fy - r * 0.35, r * 0.25, r * 0.25, rgb(mix(fruit, [1, 1, 1], 0.5)))
    return to_array(image)


def compose_flower_painting(size: int, pal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plain background, a vase, stems and flower heads made of radial petals around a dark centre."""
    s = size
    dark_bg = rng.random() < 0.5
    top = pal[DEEP] if dark_bg else pal[LIGHT]
    image = to_image(vertical_gradient(s, jitter(rng, top), jitter(rng, mix(top, pal[MID], 0.5))))
    draw = ImageDraw.Draw(image)
    vx, vy = (0.5 + rng.uniform(-0.08, 0.08)) * s, rng.uniform(0.7, 0.78) * s
    vase = rgb(jitter(rng, pal[[MID, ACCENT2, DARK][int(rng.integers(3))]]))
    draw.polygon([(vx - 0.08 * s, vy), (vx + 0.08 * s, vy), (vx + 0.12 * s, s), (vx - 0.12 * s, s)], fill=vase)
    stem = rgb(mix(pal[DEEP], LEAF, 0.6))
    t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    for _ in range(int(rng.integers(3, 8))):
        fx, fy = vx + rng.uniform(-0.3, 0.3) * s, rng.uniform(0.15, 0.55) * s
        draw.line((vx, vy, fx, fy), fill=stem, width=max(1, s // 80))
        k, r = int(rng.integers(5, 10)), rng.uniform(0.05, 0.09) * s
        angles = rng.uniform(0, 2 * np.pi) + np.arange(k) * 2 * np.pi / k  # (k,)
        ex, ey = 0.55 * r * np.cos(t), 0.25 * r * np.sin(t)  # (10,) petal outline before rotation
        ca, sa = np.cos(angles)[:, None], np.sin(angles)[:, None]  # (k, 1)
        px = fx + 0.6 * r * ca + ex * ca - ey * sa  # (k, 10)
        py = fy + 0.6 * r * sa + ex * sa + ey * ca  # (k, 10)
        petal = jitter(rng, pal[[ACCENT, ACCENT2, LIGHT][int(rng.integers(3))]], 0.08)
        for i in range(k):
            draw.polygon(list(zip(px[i].tolist(), py[i].tolist())), fill=rgb(jitter(rng, petal, 0.04)))
        _ellipse(draw, fx, fy, r * 0.25, r * 0.25, rgb(mix(pal[DARK], [0.9, 0.7, 0.1], 0.5)))
    return to_array(image)


def compose_nude_painting(size: int, pal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Drapery curves, a couch and a soft reclining figure of overlapping ovals."""
    s = size
    image = to_image(vertical_gradient(s, jitter(rng, mix(pal[DEEP], pal[MID], 0.4)), jitter(rng, pal[DEEP])))
    draw = ImageDraw.Draw(image)
    for _ in range(3):  # drapery folds
        y = rng.uniform(0.05, 0.5) * s
        draw.arc((rng.uniform(-0.5, 0.3) * s, y, rng.uniform(0.7, 1.5) * s, y + rng.uniform(0.3, 0.6) * s), 180, 360,
                 fill=rgb(mix(pal[ACCENT2], pal[LIGHT], 0.3)), width=max(2, s // 20))
    couch = rng.uniform(0.62, 0.72) * s
    draw.rectangle((0, couch, s, s), fill=rgb(jitter(rng, mix(pal[ACCENT], pal[DEEP], 0.4))))
    skin = jitter(rng, mix(SKIN, pal[LIGHT], 0.3), 0.05)
    flip = 1 if rng.random() < 0.5 else -1
    # head, chest, waist, hips, thigh, calf along a gentle curve
    parts = [(-0.36, -0.1, 0.06, 0.06), (-0.2, -0.05, 0.12, 0.08), (-0.03, -0.02, 0.09, 0.065),
             (0.12, -0.03, 0.13, 0.08), (0.28, 0.0, 0.11, 0.05), (0.42, 0.02, 0.08, 0.035)]
    for dx, dy, rx, ry in parts:
        cx, cy = (0.5 + flip * dx) * s, couch + (dy - 0.02) * s
        _ellipse(draw, cx + 0.01 * s, cy + 0.015 * s, rx * s, ry * s, rgb(skin * 0.7))  # shadow side
        _ellipse(draw, cx, cy, rx * s, ry * s, rgb(skin))
    image = image.filter(ImageFilter.GaussianBlur(s * 0.012))  # soft curves, no hard edges
    return to_array(image)


def compose_abstract(size: int, pal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Free shapes: circles, polygons, bars and thick curves in palette colours on a plain ground."""
    s = size
    ground = pal[[LIGHT, DARK, MID][int(rng.integers(3))]]
    image = to_image(vertical_gradient(s, jitter(rng, ground), jitter(rng, ground)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 14))):
        color = rgb(jitter(rng, pal[int(rng.integers(6))], 0.08))
        kind = int(rng.integers(4))
        cx, cy, r = rng.uniform(0, 1) * s, rng.uniform(0, 1) * s, rng.uniform(0.06, 0.25) * s
        if kind == 0:
            _ellipse(draw, cx, cy, r, r * rng.uniform(0.6, 1.0), color)
        elif kind == 1:
            n = int(rng.integers(3, 7))
            a = np.sort(rng.uniform(0, 2 * np.pi, n))
            rr = r * rng.uniform(0.5, 1.2, n)
            draw.polygon(list(zip((cx + rr * np.cos(a)).tolist(), (cy + rr * np.sin(a)).tolist())), fill=color)
        elif kind == 2:
            draw.rectangle((cx - r, cy - r * 0.25, cx + r, cy + r * 0.25), fill=color)
        else:
            xs = np.linspace(cx - r * 2, cx + r * 2, 12)
            ys = cy + r * 0.5 * np.sin(np.linspace(0, rng.uniform(2, 6), 12) + rng.uniform(0, 6))
            draw.line(list(zip(xs.tolist(), ys.tolist())), fill=color, width=max(2, int(r * 0.2)), joint="curve")
    return to_array(image)


COMPOSERS: dict[str, Callable[[int, np.ndarray, np.random.Generator], np.ndarray]] = {
    "abstract": compose_abstract,
    "landscape": compose_landscape,
    "flower painting": compose_flower_painting,
    "nude painting": compose_nude_painting,
    "portrait": compose_portrait,
    "cityscape": compose_cityscape,
    "still life": compose_still_life,
}
