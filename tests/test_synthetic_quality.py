"""The synthetic raters' visible preferences: each quality factor changes the pixels and moves the
score, the factors keep every style's and genre's mean, and the set stays byte-reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from squeezegen.data.captions import GENRES, STYLES
from squeezegen.data.raw import read_records
from squeezegen.data.synthetic import generate_synthetic, render_painting, simulate_ratings
from squeezegen.data.synthetic_quality import SCORE_WEIGHTS, Quality, draw_quality, quality_score_offset
from squeezegen.data.synthetic_styles import GENRE_SCORE_OFFSET, STYLE_LOOKS

BEST = {"harmony": 1.0, "balance": 1.0, "clutter": -1.0, "contrast": 1.0}
CASES = [("Impressionism", "landscape"), ("Cubism", "portrait"), ("Baroque", "still life"), ("Minimalism", "abstract")]


def _with(factor: str, value: float) -> Quality:
    return Quality(**{**BEST, factor: value})


def _render(style: str, genre: str, quality: Quality, seed: int = 0) -> np.ndarray:
    return render_painting(style, genre, 64, np.random.default_rng([seed, 7]), quality=quality).astype(np.float64)


def _edge_density(image: np.ndarray) -> float:
    lum = image.mean(-1)
    return float(np.abs(np.diff(lum, axis=0)).mean() + np.abs(np.diff(lum, axis=1)).mean())


@pytest.mark.parametrize("factor", list(SCORE_WEIGHTS))
def test_each_factor_changes_the_pixels_and_moves_the_score(factor):
    worse = -BEST[factor]
    for style, genre in CASES:
        good, bad = _render(style, genre, _with(factor, BEST[factor])), _render(style, genre, _with(factor, worse))
        assert np.abs(good - bad).mean() > 2.0, (factor, style)  # mean absolute change in 0-255 levels
        # same raters (same rng), only the factor differs: the preferred value scores higher
        good_score, _ = simulate_ratings(style, genre, np.random.default_rng(3), quality=_with(factor, BEST[factor]))
        bad_score, _ = simulate_ratings(style, genre, np.random.default_rng(3), quality=_with(factor, worse))
        assert good_score - bad_score > 1.5 * abs(SCORE_WEIGHTS[factor]), (factor, style, good_score, bad_score)


def test_the_factors_look_like_what_they_are_named():
    for style, genre in CASES:
        crisp, washed = _render(style, genre, _with("contrast", 1.0)), _render(style, genre, _with("contrast", -1.0))
        assert washed.mean(-1).std() < 0.8 * crisp.mean(-1).std(), style  # luminance spread
        tidy, cluttered = _render(style, genre, _with("clutter", -1.0)), _render(style, genre, _with("clutter", 1.0))
        assert _edge_density(cluttered) > 1.3 * _edge_density(tidy), style


def test_only_the_factor_differs_between_two_renderings():
    """Same rng, other factor value: the layout and brushwork stay (the effects use their own stream)."""
    a = _render("Realism", "landscape", _with("harmony", 1.0))
    b = _render("Realism", "landscape", _with("harmony", 1.0))
    assert np.array_equal(a, b)
    tidy, cluttered = _render("Realism", "landscape", _with("clutter", -1.0)), _render("Realism", "landscape", _with("clutter", -0.6))
    assert np.median(np.abs(tidy - cluttered)) == 0  # marks cover a part of the canvas; the rest is untouched


def test_factors_keep_every_style_and_genre_mean():
    draws = [draw_quality(np.random.default_rng([5, i])) for i in range(4000)]
    values = np.array([[getattr(q, f) for f in SCORE_WEIGHTS] for q in draws])  # (4000, 4)
    assert np.all(np.abs(values) <= 1.0) and np.all(np.abs(values.mean(0)) < 0.05)
    offsets = np.array([quality_score_offset(q) for q in draws])
    assert abs(offsets.mean()) < 3 * offsets.std() / np.sqrt(len(offsets))  # mean zero within 3 standard errors
    assert offsets.std() > 8.0  # and large: the visible part dominates the rater noise
    for style, genre in [("Minimalism", "abstract"), ("Post_Impressionism", "landscape"), ("Baroque", "portrait")]:
        scores = [simulate_ratings(style, genre, np.random.default_rng([6, i]), quality=draws[i])[0] for i in range(1500)]
        expected = STYLE_LOOKS[style].mean_score + GENRE_SCORE_OFFSET[genre]
        assert np.mean(scores) == pytest.approx(expected, abs=1.2), style


def test_generated_scores_follow_the_drawn_factors(tmp_path):
    """In a generated set, the score correlates with the factors the generator drew for each image."""
    generate_synthetic(tmp_path / "raw", num_images=60, image_size=16, seed=2)
    records = read_records(tmp_path / "raw")
    residual, offset = [], []
    for r in records:
        index = int(r["image_id"].removeprefix("syn"))
        quality = draw_quality(np.random.default_rng([2, index, 2]))
        residual.append(r["score"] - STYLE_LOOKS[r["style"]].mean_score - GENRE_SCORE_OFFSET[r["genre"]])
        offset.append(quality_score_offset(quality))
        assert r["style"] in STYLES and r["genre"] in GENRES
    assert np.corrcoef(residual, offset)[0, 1] > 0.8


def test_same_seed_same_bytes_with_quality(tmp_path):
    a = generate_synthetic(tmp_path / "a", num_images=6, image_size=24, seed=9)
    b = generate_synthetic(tmp_path / "b", num_images=6, image_size=24, seed=9)
    assert a["sha256"] == b["sha256"]
    for name in a["sha256"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
