"""How each style looks in the synthetic art set: a palette and a kind of brushwork.

Every LAPIS style gets a hand-picked six-colour palette (dark, deep, mid, light, accent, accent)
and brushwork parameters loosely modelled on the movement (short broken strokes for
Impressionism, swirling long strokes for Post-Impressionism, dots for Pointillism, facets for
Cubism, hard-edged fields for Color Field, flat outlined areas for Ukiyo-e / Pop Art, soft
modelling and dark vignettes for the Renaissance and Baroque). The point is not realism but
a set where style and genre are both visible, so downstream models have something to learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from squeezegen.data.captions import GENRES, STYLES

Brush = Literal["strokes", "dots", "facets", "fields", "smooth", "flat"]
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
    extra: Literal["", "drips", "halftone", "ornament", "paper", "glaze"] = ""
    mean_score: float = 55.0  # mean rating the synthetic raters give this style (0-100)


STYLE_LOOKS: dict[str, StyleLook] = {
    "Abstract_Expressionism": StyleLook(
        palette=("#1a1a1a", "#8c1c13", "#c9a227", "#ece4d4", "#1f4e9c", "#e8c547"), brush="strokes",
        stroke_length=0.2, stroke_width=0.045, stroke_density=1.0, extra="drips", contrast=1.1, mean_score=48),
    "Analytical_Cubism": StyleLook(
        palette=("#2b2620", "#5a4e3f", "#8a7a62", "#c2b49a", "#6d6a5e", "#a39272"), brush="facets",
        facets=45, outline=0.4, saturation=0.55, mean_score=46),
    "Art_Nouveau_Modern": StyleLook(
        palette=("#2f3a2a", "#5b7045", "#b8a16a", "#efe3c2", "#c7893a", "#3f7f7a"), brush="flat",
        outline=0.7, extra="ornament", mean_score=60),
    "Baroque": StyleLook(
        palette=("#120c08", "#3b2414", "#7a4a24", "#e0c08a", "#8e1b1b", "#c79a3b"), brush="smooth",
        blur=0.012, vignette=0.55, contrast=1.2, brightness=0.02, extra="glaze", mean_score=58),
    "Color_Field_Painting": StyleLook(
        palette=("#3a0f12", "#a3242a", "#e06b2d", "#f2d2a0", "#4b2a66", "#1f3f77"), brush="fields",
        field_cells=3, blur=0.02, saturation=1.25, vignette=0.05, mean_score=44),
    "Contemporary_Realism": StyleLook(
        palette=("#2a2f33", "#556b73", "#9aa7a0", "#e8e4da", "#c47f4f", "#6f8f5a"), brush="smooth",
        blur=0.006, vignette=0.1, mean_score=57),
    "Cubism": StyleLook(
        palette=("#2e2a24", "#6b5136", "#b08a4e", "#ddd0b0", "#3e5c76", "#9c4b32"), brush="facets",
        facets=34, outline=0.6, saturation=0.85, mean_score=50),
    "Early_Renaissance": StyleLook(
        palette=("#2a1f14", "#4a5d3a", "#a88f5c", "#efe1bd", "#2d4f8f", "#c9a03b"), brush="smooth",
        blur=0.004, outline=0.25, vignette=0.2, extra="glaze", mean_score=56),
    "Expressionism": StyleLook(
        palette=("#1c1424", "#2e6b3f", "#d1492c", "#f0d35a", "#6a2d8c", "#2a6fb0"), brush="strokes",
        stroke_length=0.14, stroke_width=0.045, stroke_density=1.1, flow="gradient", outline=0.8,
        saturation=1.3, contrast=1.2, mean_score=52),
    "Fauvism": StyleLook(
        palette=("#16324f", "#2e8b57", "#ff5a1f", "#ffd23f", "#e4007c", "#00a6d6"), brush="strokes",
        stroke_length=0.1, stroke_width=0.05, stroke_density=0.9, saturation=1.6, outline=0.3, mean_score=55),
    "High_Renaissance": StyleLook(
        palette=("#1f1a14", "#4d4331", "#8c7a58", "#e3cfa3", "#5d7386", "#9b3b2a"), brush="smooth",
        blur=0.02, vignette=0.45, extra="glaze", mean_score=60),
    "Impressionism": StyleLook(
        palette=("#3d5a80", "#6a994e", "#a7c957", "#f7f3e3", "#f4a261", "#98c1d9"), brush="strokes",
        stroke_length=0.05, stroke_width=0.028, stroke_density=1.6, brightness=0.06, vignette=0.05, mean_score=64),
    "Mannerism_Late_Renaissance": StyleLook(
        palette=("#1b1d26", "#3d4a6b", "#8a7f9e", "#e6d8c8", "#c2553d", "#4f8f7a"), brush="smooth",
        blur=0.014, vignette=0.4, contrast=1.15, saturation=1.1, mean_score=53),
    "Minimalism": StyleLook(
        palette=("#202020", "#9e9e9e", "#d6d3cc", "#f5f3ee", "#d62828", "#1d3557"), brush="fields",
        field_cells=2, saturation=0.6, vignette=0.0, mean_score=40),
    "Naive_Art_Primitivism": StyleLook(
        palette=("#2b2d42", "#3a7d44", "#e9c46a", "#fdf6e3", "#e76f51", "#2a9d8f"), brush="flat",
        outline=0.9, saturation=1.2, vignette=0.0, mean_score=54),
    "New_Realism": StyleLook(  # WikiArt files Edward Hopper here: hard light, clean planes
        palette=("#1e1e1e", "#4f5d75", "#bfc0c0", "#f4efe6", "#ef8354", "#2f6f5e"), brush="smooth",
        blur=0.003, contrast=1.25, saturation=0.95, vignette=0.1, mean_score=52),
    "Northern_Renaissance": StyleLook(
        palette=("#141a12", "#2f4a2c", "#7b6a48", "#e8dcc0", "#8a1f1f", "#2b3f6b"), brush="smooth",
        blur=0.003, outline=0.3, vignette=0.35, extra="glaze", mean_score=59),
    "Pointillism": StyleLook(
        palette=("#2f4b7c", "#5aa469", "#f6d55c", "#fbf8ef", "#ed553b", "#8fbcdb"), brush="dots",
        dot_spacing=0.035, brightness=0.05, vignette=0.0, mean_score=58),
    "Pop_Art": StyleLook(
        palette=("#111111", "#0057b8", "#ffd100", "#ffffff", "#e4002b", "#ff69b4"), brush="flat",
        outline=1.0, saturation=1.4, vignette=0.0, extra="halftone", mean_score=51),
    "Post_Impressionism": StyleLook(
        palette=("#0b1f4b", "#1f5fa8", "#6fa8dc", "#f4e9c1", "#f1c232", "#e06c1f"), brush="strokes",
        stroke_length=0.11, stroke_width=0.03, stroke_density=1.7, flow="swirl", outline=0.35,
        saturation=1.2, mean_score=66),
    "Realism": StyleLook(
        palette=("#1d1b16", "#4a4536", "#8b7d5b", "#d9ceb2", "#6b4226", "#5b6e57"), brush="smooth",
        blur=0.008, vignette=0.3, mean_score=57),
    "Rococo": StyleLook(
        palette=("#5c4a5a", "#9fb8c9", "#e8c8c8", "#fbf3ea", "#d9a5b3", "#c9b37e"), brush="strokes",
        stroke_length=0.07, stroke_width=0.03, stroke_density=0.8, blur=0.015, contrast=1.05,
        vignette=0.15, mean_score=55),
    "Romanticism": StyleLook(
        palette=("#15161c", "#3b4456", "#8a6f4e", "#f0d9a8", "#c0502e", "#5f7f99"), brush="strokes",
        stroke_length=0.1, stroke_width=0.03, stroke_density=1.3, flow="horizontal", blur=0.012,
        vignette=0.55, contrast=1.2, mean_score=61),
    "Symbolism": StyleLook(
        palette=("#1b1030", "#4b2e6e", "#8a6fb0", "#f0e0b0", "#c9a23f", "#2e7d7d"), brush="smooth",
        blur=0.015, vignette=0.4, saturation=1.15, extra="glaze", mean_score=57),
    "Synthetic_Cubism": StyleLook(
        palette=("#222222", "#3b6ea5", "#d9a441", "#f2ead8", "#c0392b", "#6a8d4e"), brush="facets",
        facets=14, outline=0.8, saturation=1.2, vignette=0.0, mean_score=49),
    "Ukiyo_e": StyleLook(
        palette=("#1c2541", "#3a5a8c", "#9bb7c9", "#efe3c8", "#c8553d", "#6b8f71"), brush="flat",
        outline=0.75, saturation=0.9, vignette=0.0, extra="paper", mean_score=60),
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


def palette_array(look: StyleLook) -> np.ndarray:
    """The palette as floats in [0, 1], shape (6, 3)."""
    return np.array([[int(h[i : i + 2], 16) for i in (1, 3, 5)] for h in look.palette], np.float32) / 255.0
