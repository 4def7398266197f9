"""How each style looks in the synthetic art set: a palette and a kind of brushwork.

Every LAPIS style gets a hand-picked six-colour palette (dark, deep, mid, light, accent, accent)
and brushwork parameters loosely modelled on the movement (short broken strokes for
Impressionism, swirling long strokes for Post-Impressionism, dots for Pointillism, facets for
Cubism, hard-edged fields for Color Field, flat outlined areas for Ukiyo-e / Pop Art, soft
modelling for the Renaissance). Styles that share a brush get a signature a 64 px judge can see:
a tenebrist spotlight (Baroque), a gold-ground arch (Early Renaissance), aerial haze (High
Renaissance), crisp jewel colours on black (Northern Renaissance), elongated figures in acid
pinks (Mannerism), a hard cast shadow (New Realism, i.e. Hopper), a golden glow (Symbolism), a
light oval (Rococo), palette-knife dabs (Realism), a bokashi sky (Ukiyo-e). The point is not
realism but a set where style and genre are both visible, so downstream models have something to learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from squeezegen.data.captions import GENRES, STYLES

Brush = Literal["strokes", "dots", "facets", "fields", "smooth", "flat"]
# The extra touches a style may add (synthetic_brush.add_extra): gestural drips, Ben-Day halftone, an
# ornamental frame, washi paper, yellow varnish, a tenebrist spotlight, a gold-ground arch, aerial
# haze, a dreamy glow, a hard cast shadow, a light oval cartouche, a bokashi sky band.
EXTRAS = ("drips", "halftone", "ornament", "paper", "glaze", "spotlight", "gold", "haze", "glow", "shadow", "oval", "bokashi")
Flow = Literal["random", "swirl", "gradient", "horizontal"]


@dataclass(frozen=True, kw_only=True)
class StyleLook:
    """Palette and brushwork of one style; lengths are fractions of the image side."""

    palette: tuple[str, str, str, str, str, str]  # dark, deep, mid, light, accent, accent (hex)
    brush: Brush
    stroke_length: float = 0.08
    stroke_width: float = 0.025
    stroke_density: float = 1.0  # ~ how many times strokes cover the canvas
    flow: Flow = "random"
    dot_spacing: float = 0.035  # pointillist dot grid pitch
    facets: int = 30  # cubist facet count
    field_cells: int = 4  # colour-field grid cells per side
    blur: float = 0.0  # soft modelling radius
    outline: float = 0.0  # darkness of contour lines, 0..1
    vignette: float = 0.15  # darkening of the corners, 0..1
    saturation: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0
    elongate: float = 1.0  # vertical stretch of the composition (Mannerism's long figures), centre-cropped
    sharpen: float = 0.0  # unsharp-mask strength after the brushwork (crisp, detailed surfaces)
    extra: str = ""  # touches joined by "+", from EXTRAS

    mean_score: float = 55.0  # mean rating the synthetic raters give this style (0-100)


STYLE_LOOKS: dict[str, StyleLook] = {
    "Abstract_Expressionism": StyleLook(
        palette=("#1a1a1a", "#8c1c13", "#c9a227", "#ece4d4", "#1f4e9c", "#e8c547"), brush="strokes",
        stroke_length=0.2, stroke_width=0.045, stroke_density=1.0, extra="drips", contrast=1.1, mean_score=48),
    "Analytical_Cubism": StyleLook(
        palette=("#2b2620", "#5a4e3f", "#8a7a62", "#c2b49a", "#6d6a5e", "#a39272"), brush="facets",  # grey-ochre crystal
        facets=60, outline=0.9, saturation=0.3, contrast=1.15, mean_score=46),
    "Art_Nouveau_Modern": StyleLook(
        palette=("#2f3a2a", "#5b7045", "#b8a16a", "#efe3c2", "#c7893a", "#3f7f7a"), brush="flat",
        outline=0.7, extra="ornament", mean_score=60),
    "Baroque": StyleLook(  # tenebrism: one raking spotlight, the rest sinks into brown-black
        palette=("#120c08", "#3b2414", "#7a4a24", "#e0c08a", "#8e1b1b", "#c79a3b"), brush="smooth",
        blur=0.012, vignette=0.3, contrast=1.2, brightness=0.02, extra="glaze+spotlight", mean_score=58),
    "Color_Field_Painting": StyleLook(
        palette=("#3a0f12", "#a3242a", "#e06b2d", "#f2d2a0", "#4b2a66", "#1f3f77"), brush="fields",
        field_cells=3, blur=0.02, saturation=1.25, vignette=0.05, mean_score=44),
    "Contemporary_Realism": StyleLook(  # crisp, photographic daylight: sharp edges, clean bright colour
        palette=("#2b2b2b", "#7a6e64", "#c9bba8", "#f5f1ea", "#3f88c5", "#d1495b"), brush="smooth",
        sharpen=1.5, brightness=0.06, saturation=1.15, vignette=0.0, mean_score=57),
    "Cubism": StyleLook(  # early (Cézanne-like) Cubism: ochre and green planes lit from many sides
        palette=("#2a2a22", "#4f6b3a", "#c08a3e", "#e6d2a2", "#3d5c7a", "#8b3a2a"), brush="facets",
        facets=24, outline=0.7, saturation=1.0, contrast=1.1, mean_score=50),
    "Early_Renaissance": StyleLook(  # tempera on a gold ground: clear flat colour under a gilded arch
        palette=("#2a1f14", "#4a5d3a", "#a88f5c", "#efe1bd", "#2d4f8f", "#c9a03b"), brush="flat",
        outline=0.35, vignette=0.0, saturation=1.1, extra="gold", mean_score=56),
    "Expressionism": StyleLook(  # dark, acid, heavy black contours
        palette=("#120c1a", "#2e6b3f", "#d1492c", "#e6d24a", "#6a2d8c", "#2a6fb0"), brush="strokes",
        stroke_length=0.14, stroke_width=0.045, stroke_density=1.1, flow="gradient", outline=1.0,
        saturation=1.3, contrast=1.3, brightness=-0.06, mean_score=52),
    "Fauvism": StyleLook(  # pure, light, unmixed colour in broad patches, no contours
        palette=("#16324f", "#2e8b57", "#ff5a1f", "#ffd23f", "#e4007c", "#00a6d6"), brush="strokes",
        stroke_length=0.12, stroke_width=0.07, stroke_density=0.8, saturation=1.7, brightness=0.05, mean_score=55),
    "High_Renaissance": StyleLook(  # sfumato and aerial perspective: soft forms, a blue haze above
        palette=("#1f1a14", "#4d4331", "#8c7a58", "#e3cfa3", "#5d7386", "#9b3b2a"), brush="smooth",
        blur=0.025, vignette=0.25, extra="haze", mean_score=60),
    "Impressionism": StyleLook(  # broken colour in short horizontal dabs, high key
        palette=("#3d5a80", "#6a994e", "#a7c957", "#f7f3e3", "#f4a261", "#98c1d9"), brush="strokes",
        stroke_length=0.07, stroke_width=0.035, stroke_density=1.6, flow="horizontal", brightness=0.08,
        vignette=0.0, mean_score=64),
    "Mannerism_Late_Renaissance": StyleLook(  # elongated figures, acid changeant pinks and greens
        palette=("#1b1d26", "#3d4a6b", "#c27a9e", "#f0d8d8", "#7fd1b9", "#e0e05a"), brush="smooth",
        blur=0.008, elongate=1.45, vignette=0.3, contrast=1.15, saturation=1.3, mean_score=53),
    "Minimalism": StyleLook(
        palette=("#202020", "#9e9e9e", "#d6d3cc", "#f5f3ee", "#d62828", "#1d3557"), brush="fields",
        field_cells=2, saturation=0.6, vignette=0.0, mean_score=40),
    "Naive_Art_Primitivism": StyleLook(
        palette=("#2b2d42", "#3a7d44", "#e9c46a", "#fdf6e3", "#e76f51", "#2a9d8f"), brush="flat",
        outline=0.9, saturation=1.2, vignette=0.0, mean_score=54),
    "New_Realism": StyleLook(  # WikiArt files Edward Hopper here: hard light, clean planes, long cast shadows
        palette=("#1f2a2e", "#2f6f5e", "#c8a24a", "#f2e6c9", "#b23a2b", "#3f6f9a"), brush="smooth",
        blur=0.003, contrast=1.25, saturation=1.1, vignette=0.0, extra="shadow", mean_score=52),
    "Northern_Renaissance": StyleLook(  # oil glazes: minute crisp detail, jewel colours on near-black
        palette=("#0b0f0a", "#2f4a2c", "#7b6a48", "#e8dcc0", "#a01c1c", "#23408f"), brush="smooth",
        sharpen=2.0, outline=0.3, vignette=0.5, saturation=1.25, extra="glaze", mean_score=59),
    "Pointillism": StyleLook(  # big separate dots of pure colour on a white ground
        palette=("#2f4b7c", "#5aa469", "#f6d55c", "#fbf8ef", "#ed553b", "#8fbcdb"), brush="dots",
        dot_spacing=0.055, saturation=1.3, brightness=0.05, vignette=0.0, mean_score=58),
    "Pop_Art": StyleLook(
        palette=("#111111", "#0057b8", "#ffd100", "#ffffff", "#e4002b", "#ff69b4"), brush="flat",
        outline=1.0, saturation=1.4, vignette=0.0, extra="halftone", mean_score=51),
    "Post_Impressionism": StyleLook(
        palette=("#0b1f4b", "#1f5fa8", "#6fa8dc", "#f4e9c1", "#f1c232", "#e06c1f"), brush="strokes",
        stroke_length=0.11, stroke_width=0.03, stroke_density=1.7, flow="swirl", outline=0.35,
        saturation=1.2, mean_score=66),
    "Realism": StyleLook(  # earthy, unidealized, thick palette-knife dabs
        palette=("#1d1b16", "#3f4a2a", "#8b6d3b", "#d9c59a", "#7a3a1e", "#4f6b3f"), brush="strokes",
        stroke_length=0.05, stroke_width=0.05, stroke_density=1.2, saturation=1.0, vignette=0.3, mean_score=57),
    "Rococo": StyleLook(  # pastel, feathery, in a light oval cartouche
        palette=("#5c4a5a", "#9fb8c9", "#e8c8c8", "#fbf3ea", "#d9a5b3", "#c9b37e"), brush="strokes",
        stroke_length=0.07, stroke_width=0.03, stroke_density=0.8, blur=0.015, contrast=1.05,
        brightness=0.04, vignette=0.0, extra="oval", mean_score=55),
    "Romanticism": StyleLook(
        palette=("#15161c", "#3b4456", "#8a6f4e", "#f0d9a8", "#c0502e", "#5f7f99"), brush="strokes",
        stroke_length=0.1, stroke_width=0.03, stroke_density=1.3, flow="horizontal", blur=0.012,
        vignette=0.55, contrast=1.2, mean_score=61),
    "Symbolism": StyleLook(  # dreamlike: deep violet dusk and a golden glow
        palette=("#1b1030", "#4b2e6e", "#8a6fb0", "#f0e0b0", "#e0b03f", "#2e7d7d"), brush="smooth",
        blur=0.015, vignette=0.4, saturation=1.2, extra="glow", mean_score=57),
    "Synthetic_Cubism": StyleLook(
        palette=("#222222", "#3b5e85", "#b8894a", "#e8dcc0", "#7a2e22", "#556b3a"), brush="facets",  # Gris, Braque: browns, blues
        facets=14, outline=0.9, saturation=1.0, vignette=0.0, mean_score=49),
    "Ukiyo_e": StyleLook(  # woodblock: flat areas, black keyblock lines, a Prussian-blue bokashi band, paper
        palette=("#1c2541", "#2b4f8c", "#9bb7c9", "#efe3c8", "#c8553d", "#6b8f71"), brush="flat",
        outline=0.9, saturation=1.0, vignette=0.0, extra="paper+bokashi", mean_score=60),
}

# How much each genre moves the synthetic raters' mean score (mild on purpose).
GENRE_SCORE_OFFSET: dict[str, float] = {
    "abstract": -4.0,
    "landscape": 4.0,
    "flower painting": 2.0,
    "nude painting": 0.0,
    "portrait": 1.0,
    "cityscape": 0.0,
    "still life": -2.0,
}

if tuple(STYLE_LOOKS) != STYLES or tuple(GENRE_SCORE_OFFSET) != GENRES:  # one list of names, kept in sync
    raise RuntimeError("synthetic_styles: STYLE_LOOKS / GENRE_SCORE_OFFSET must follow captions.STYLES / GENRES")
if unknown := {e for look in STYLE_LOOKS.values() for e in look.extra.split("+") if e} - set(EXTRAS):
    raise RuntimeError(f"synthetic_styles: unknown extra touches {sorted(unknown)}; known: {EXTRAS}")


def palette_array(look: StyleLook) -> np.ndarray:
    """The palette as floats in [0, 1], shape (6, 3)."""
    return np.array([[int(h[i : i + 2], 16) for i in (1, 3, 5)] for h in look.palette], np.float32) / 255.0
