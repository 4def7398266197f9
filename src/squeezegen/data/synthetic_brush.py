"""Brushwork for the synthetic art set: turns a genre composition into a style.

`paint(base, look, palette, rng)` takes a (S, S, 3) float composition and returns the painted
(S, S, 3) float image: multi-scale colour texture, then the style's brushwork (strokes, dots,
facets, colour fields, soft modelling or flat outlined areas), contour lines, an extra touch
(drips, halftone, ornament, paper, varnish) and the finish (saturation, contrast, vignette,
canvas weave). Everything is numpy over whole arrays or PIL drawing; no per-pixel Python loops.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from squeezegen.data.synthetic_compose import DARK, LIGHT, mix, rgb, to_array, to_image
from squeezegen.data.synthetic_quality import NEUTRAL, Quality, add_clutter, wash_out
from squeezegen.data.synthetic_styles import StyleLook


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field, shape (size, size), std ≈ 1: a cells×cells normal grid upsampled bicubically."""
    grid = rng.normal(0, 1, (cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC), np.float32)


def luminance(image: np.ndarray) -> np.ndarray:
    """(S, S, 3) → (S, S) Rec. 601 luma."""
    return image @ np.array([0.299, 0.587, 0.114], np.float32)


def blur(image: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of a float RGB array (through PIL, 8-bit precision is plenty here)."""
    if radius < 0.3:
        return image
    return to_array(to_image(image).filter(ImageFilter.GaussianBlur(radius)))


def add_texture(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour and brightness variation at three scales (broad light, mid patches, fine mottling)."""
    s = image.shape[0]
    light = 1 + 0.07 * smooth_noise(rng, s, 3) + 0.04 * smooth_noise(rng, s, 9) + 0.025 * smooth_noise(rng, s, 27)
    tint = 0.025 * np.stack([smooth_noise(rng, s, 5) for _ in range(3)], axis=-1)  # (S, S, 3)
    return image * light[..., None] + tint


def contour_mask(image: np.ndarray, threshold: float = 0.08) -> np.ndarray:
    """(S, S) bool: where the luminance changes sharply (region boundaries of a composition)."""
    lum = luminance(image)
    edge = np.zeros(lum.shape, bool)
    edge[:, 1:] |= np.abs(np.diff(lum, axis=1)) > threshold
    edge[1:, :] |= np.abs(np.diff(lum, axis=0)) > threshold
    return edge


def brush_strokes(base: np.ndarray, look: StyleLook, pal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Many short lines coloured from the composition, oriented by the style's flow."""
    s = base.shape[0]
    length, width = look.stroke_length * s, max(1, round(look.stroke_width * s))
    n = int(look.stroke_density / (look.stroke_length * look.stroke_width))
    x = rng.uniform(-0.02, 1.02, n) * s  # (n,)
    y = rng.uniform(-0.02, 1.02, n) * s
    xi, yi = np.clip(x.astype(int), 0, s - 1), np.clip(y.astype(int), 0, s - 1)
    if look.flow == "swirl":  # a smooth angle field: strokes curl around like van Gogh's skies
        angle = (smooth_noise(rng, s, 3) * 2.2)[yi, xi]
    elif look.flow == "gradient":  # along contours: perpendicular to the luminance gradient
        lum = luminance(blur(base, s * 0.03))
        gy, gx = np.gradient(lum)
        angle = np.arctan2(gy[yi, xi], gx[yi, xi]) + np.pi / 2 + rng.normal(0, 0.3, n)
    elif look.flow == "horizontal":
        angle = rng.normal(0, 0.25, n)
    else:
        angle = rng.uniform(0, np.pi, n)
    half = 0.5 * length * rng.uniform(0.6, 1.4, n)  # (n,)
    dx, dy = np.cos(angle) * half, np.sin(angle) * half
    colors = base[yi, xi] * (1 + rng.normal(0, 0.07, (n, 3))) + rng.normal(0, 0.02, (n, 3))  # (n, 3)
    accent = rng.random(n) < 0.015  # a few strokes pulled towards a palette colour
    colors[accent] = mix(colors[accent], pal[rng.integers(0, 6, int(accent.sum()))], 0.45)
    colors8 = (np.clip(colors, 0, 1) * 255 + 0.5).astype(np.int32).tolist()
    image = to_image(blur(base, width * 1.5 + look.blur * s))
    draw = ImageDraw.Draw(image)
    segments = np.stack([x - dx, y - dy, x + dx, y + dy], axis=1).tolist()  # (n, 4)
    for seg, color in zip(segments, colors8):
        draw.line(seg, fill=tuple(color), width=width)
    return to_array(image)


def brush_dots(base: np.ndarray, look: StyleLook, pal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pointillism: a jittered grid of round dots on a light ground, some in complementary accents."""
    s = base.shape[0]
    pitch = max(3.0, look.dot_spacing * s)
    cells = int(np.ceil(s / pitch))
    cy = (np.arange(cells)[:, None] + 0.5 + rng.uniform(-0.2, 0.2, (cells, cells))) * pitch  # (cells, cells)
    cx = (np.arange(cells)[None, :] + 0.5 + rng.uniform(-0.2, 0.2, (cells, cells))) * pitch
    sample = base[np.clip(cy.astype(int), 0, s - 1), np.clip(cx.astype(int), 0, s - 1)]  # (cells, cells, 3)
    dot_color = sample * (1 + rng.normal(0, 0.08, sample.shape))
    swap = rng.random((cells, cells)) < 0.2
    dot_color[swap] = mix(dot_color[swap], pal[rng.integers(1, 6, int(swap.sum()))], 0.6)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)  # (S, S) each
    row, col = np.minimum((yy / pitch).astype(int), cells - 1), np.minimum((xx / pitch).astype(int), cells - 1)
    dist2 = (yy - cy[row, col]) ** 2 + (xx - cx[row, col]) ** 2
    inside = (dist2 < (0.44 * pitch) ** 2)[..., None]
    ground = mix(blur(base, pitch), mix(pal[LIGHT], np.ones(3, np.float32), 0.5), 0.45)  # a near-white ground between the dots
    return np.where(inside, dot_color[row, col], ground)


def brush_facets(base: np.ndarray, look: StyleLook, pal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cubism: Voronoi facets, each one flat colour from the composition with its own light ramp."""
    s = base.shape[0]
    n = look.facets
    seeds = rng.uniform(0, s, (n, 2)).astype(np.float32)  # (n, 2) as (y, x)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    dist = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2  # (S, S, n)
    label = dist.argmin(axis=-1)  # (S, S)
    sy, sx = seeds[:, 0].astype(int), seeds[:, 1].astype(int)
    color = blur(base, s * 0.015)[sy, sx]  # (n, 3)
    direction = rng.normal(0, 1, (n, 2)).astype(np.float32)  # light ramp per facet
    ramp = ((yy - seeds[label, 0]) * direction[label, 0] + (xx - seeds[label, 1]) * direction[label, 1]) / s
    out = color[label] * (1 + 1.2 * ramp[..., None])
    edge = np.zeros((s, s), bool)
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    return np.where(edge[..., None], mix(out, pal[DARK], 0.7 * look.outline), out)


def brush_fields(base: np.ndarray, look: StyleLook, pal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour fields: a few hard-edged blocks at irregular cuts, each the mean colour under it."""
    s = base.shape[0]
    k = look.field_cells
    cuts = [(np.arange(1, k) + rng.uniform(-0.3, 0.3, k - 1)) / k for _ in range(2)]  # ordered, never empty cells
    ys, xs = (np.concatenate([[0], (c * s).astype(int)]) for c in cuts)
    sums = np.add.reduceat(np.add.reduceat(base, ys, axis=0), xs, axis=1)  # (cells, cells, 3)
    counts = np.diff(np.append(ys, s))[:, None, None] * np.diff(np.append(xs, s))[None, :, None]
    means = sums / counts
    means = means + (means - means.mean(axis=(0, 1))) * 0.6  # exaggerate the differences between blocks
    row = np.searchsorted(ys, np.arange(s), side="right") - 1
    col = np.searchsorted(xs, np.arange(s), side="right") - 1
    out = means[row[:, None], col[None, :]]  # (S, S, 3)
    if look.outline:
        edge = np.zeros((s, s), bool)
        edge[np.clip(ys[1:], 0, s - 1), :] = True
        edge[:, np.clip(xs[1:], 0, s - 1)] = True
        out = np.where(edge[..., None], mix(out, pal[DARK], look.outline), out)
    return blur(out, look.blur * s)


def brush_smooth(base: np.ndarray, look: StyleLook, pal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soft modelling: blurred forms lit from one side (chiaroscuro)."""
    s = base.shape[0]
    out = blur(base, look.blur * s)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
    light = 1 + 0.25 * (xx * np.cos(theta) + yy * np.sin(theta))  # (S, S)
    return out * light[..., None]


def brush_flat(base: np.ndarray, look: StyleLook, pal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat areas: every pixel snaps to the nearest palette colour (plus two mixes), with outlines."""
    s = base.shape[0]
    inks = np.concatenate([pal, mix(pal[1:3], pal[3:5], 0.5)])  # (8, 3)
    smooth = blur(base, s * 0.008)
    label = ((smooth[..., None, :] - inks) ** 2).sum(-1).argmin(-1)  # (S, S)
    out = inks[label]
    edge = np.zeros((s, s), bool)
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    return np.where(edge[..., None], mix(out, pal[DARK], look.outline), out)


BRUSHES = {"strokes": brush_strokes, "dots": brush_dots, "facets": brush_facets,
           "fields": brush_fields, "smooth": brush_smooth, "flat": brush_flat}


def add_extra(image: np.ndarray, look: StyleLook, pal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The style's extra touches (`look.extra`, joined by "+"), in order."""
    for touch in filter(None, look.extra.split("+")):
        image = np.clip(add_touch(image, touch, pal, rng), 0, 1)
    return image


def add_touch(image: np.ndarray, touch: str, pal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One extra touch (synthetic_styles.EXTRAS) on a painting (S, S, 3)."""
    s = image.shape[0]
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s  # (S, S) each, in [0, 1)
    if touch == "drips":  # gestural flung lines and splatter
        pil = to_image(image)
        draw = ImageDraw.Draw(pil)
        for _ in range(int(rng.integers(4, 9))):
            steps = rng.normal(0, 0.08 * s, (12, 2)).cumsum(axis=0) + rng.uniform(0, s, 2)
            color = rgb(pal[int(rng.integers(6))])
            draw.line([tuple(p) for p in steps.tolist()], fill=color, width=max(1, s // 90), joint="curve")
        for cx, cy, r, k in zip(*(rng.uniform(0, s, (2, 25))), rng.uniform(0.3, 1.5, 25) * s / 100, rng.integers(0, 6, 25)):
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb(pal[k]))
        return to_array(pil)
    if touch == "halftone":  # Ben-Day dots over the light areas
        pitch = max(3.0, s / 18)  # coarse enough to survive at 64 px
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        dots = (np.sin(xx * 2 * np.pi / pitch) * np.sin(yy * 2 * np.pi / pitch)) > 0.3
        light = luminance(image) > 0.45
        return np.where((dots & light)[..., None], mix(image, pal[4], 0.45), image)
    if touch == "ornament":  # a frame and whiplash curves
        pil = to_image(image)
        draw = ImageDraw.Draw(pil)
        frame = max(2, s // 28)
        draw.rectangle((0, 0, s - 1, s - 1), outline=rgb(pal[4]), width=frame)
        for _ in range(2):
            xs = np.linspace(0, s, 30)
            ys = rng.uniform(0.2, 0.8) * s + 0.12 * s * np.sin(xs / s * rng.uniform(4, 9) + rng.uniform(0, 6))
            draw.line(list(zip(xs.tolist(), ys.tolist())), fill=rgb(pal[DARK]), width=max(1, s // 70), joint="curve")
        return to_array(pil)
    if touch == "paper":  # washi paper: a warm tone and horizontal fibres
        grid = rng.normal(0, 1, (s // 2 + 1, 6)).astype(np.float32)
        fibres = np.asarray(Image.fromarray(grid).resize((s, s), Image.Resampling.BICUBIC), np.float32)
        return mix(image, np.array([0.93, 0.87, 0.74], np.float32), 0.15) * (1 + 0.03 * fibres[..., None])
    if touch == "glaze":  # warm, yellowed varnish
        return image * np.array([1.0, 0.96, 0.84], np.float32)
    if touch == "spotlight":  # tenebrism: one pool of light near the centre, the rest near black
        cy, cx = rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.7)
        light = 0.22 + 0.9 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.2**2))
        return image * light[..., None]
    if touch == "gold":  # a gold ground above a round arch: gilded spandrels in the top corners
        cy, r = 0.45, 0.44
        spandrel = (yy < cy) & ((yy - cy) ** 2 + (xx - 0.5) ** 2 > r**2)
        gold = np.array([0.85, 0.66, 0.24], np.float32) * (1 + 0.08 * np.sin(xx * s * 1.7) * np.sin(yy * s * 1.3))[..., None]
        return np.where(spandrel[..., None], gold, image)
    if touch == "haze":  # aerial perspective: the upper part fades into a pale blue distance
        t = 0.6 * np.clip(1.0 - yy / 0.6, 0, 1) ** 1.5
        return mix(image, np.array([0.70, 0.78, 0.86], np.float32), t[..., None])
    if touch == "glow":  # the light parts bloom into a golden haze
        bright = np.clip(luminance(image) - 0.4, 0, 1)[..., None] * mix(pal[4], np.ones(3, np.float32), 0.3)
        return image + 0.9 * blur(bright, s * 0.05)
    if touch == "shadow":  # hard light: a long straight cast shadow darkens one side of a diagonal
        angle = rng.uniform(0.5, 1.1) * (1 if rng.random() < 0.5 else -1) + np.pi / 2
        offset = rng.uniform(-0.15, 0.15)
        side = (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle) > offset
        return np.where(side[..., None], image * np.array([0.45, 0.5, 0.62], np.float32), image * 1.08)
    if touch == "oval":  # a light oval cartouche: outside the oval the canvas fades to a pale pastel
        d = ((xx - 0.5) / 0.47) ** 2 + ((yy - 0.5) / 0.5) ** 2
        t = np.clip((d - 0.85) / 0.3, 0, 1)
        return mix(image, mix(pal[3], np.ones(3, np.float32), 0.3), 0.9 * t[..., None])
    if touch == "bokashi":  # woodblock sky: a Prussian-blue band graded down from the top edge
        t = 0.9 * np.clip(1.0 - yy / 0.28, 0, 1)
        return mix(image, np.array([0.10, 0.20, 0.45], np.float32), t[..., None])
    raise ValueError(f"unknown extra touch {touch!r}")


def finish(image: np.ndarray, look: StyleLook, rng: np.random.Generator) -> np.ndarray:
    """Saturation, contrast, brightness, vignette and a faint canvas weave; clipped to [0, 1]."""
    s = image.shape[0]
    lum = luminance(image)[..., None]
    image = lum + (image - lum) * look.saturation
    image = (image - 0.5) * look.contrast + 0.5 + look.brightness
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
    image = image * (1 - look.vignette * 1.6 * (xx**2 + yy**2))[..., None]
    weave = 0.02 * np.sin(xx * s * np.pi * 0.7) * np.sin(yy * s * np.pi * 0.7)  # (S, S) canvas grain
    return np.clip(image + weave[..., None], 0, 1)


def elongate(image: np.ndarray, factor: float) -> np.ndarray:
    """(S, S, 3) stretched vertically by `factor` about its centre, cropped back to (S, S, 3)."""
    s = image.shape[0]
    tall = to_image(image).resize((s, int(round(s * factor))), Image.Resampling.BILINEAR)
    top = (tall.height - s) // 2
    return to_array(tall.crop((0, top, s, top + s)))


def paint(
    base: np.ndarray,
    look: StyleLook,
    pal: np.ndarray,
    rng: np.random.Generator,
    *,
    quality: Quality = NEUTRAL,
    marks_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Composition (S, S, 3) → painting (S, S, 3), both float in [0, 1].

    `quality` sets the tonal contrast (after the style's finish) and adds the clutter marks (last,
    so no brush, finish or contrast hides them; drawn from `marks_rng`, so they never shift `rng`'s draws).
    """
    if look.elongate != 1.0:  # stretch the composition vertically, keep the centre
        base = elongate(base, look.elongate)
    textured = np.clip(add_texture(base, rng), 0, 1)
    out = BRUSHES[look.brush](textured, look, pal, rng)
    if look.sharpen:
        out = to_array(to_image(out).filter(ImageFilter.UnsharpMask(radius=2, percent=int(100 * look.sharpen), threshold=0)))
    if look.outline and look.brush in ("strokes", "smooth"):  # contour lines around the forms
        edges = contour_mask(blur(base, base.shape[0] * 0.006))
        out = np.where(edges[..., None], mix(out, pal[DARK], look.outline * 0.8), out)
    out = add_extra(np.clip(out, 0, 1), look, pal, rng)
    out = wash_out(finish(out, look, rng), quality.contrast)
    # the marks go on last: neither the style's finish (vignette, spotlight…) nor a washed-out contrast hides them
    return add_clutter(out, quality.clutter, pal, marks_rng if marks_rng is not None else np.random.default_rng(0))
