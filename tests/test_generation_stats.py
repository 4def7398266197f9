"""The bootstrap behind evaluate's `gen.*.ci95` intervals, on synthetic (seed, condition) tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from squeezegen.generation.measure import (
    Conditions,
    SamplingSettings,
    Verdicts,
    evaluate_rq,
    generation_figures,
    generation_intervals,
    judge_figures,
    most_frequent,
    sampling_seeds,
    style_genre_picture,
)
from squeezegen.judge import FrechetReference, frechet_distance
from squeezegen.stats import bootstrap_intervals, take


def mean_interval(table: np.ndarray, **kw) -> dict[str, float]:
    """The bootstrap interval of the mean of a (k, n) table."""
    k, n = table.shape
    return bootstrap_intervals(lambda c, s: {"mean": take(table, c, s).mean()}, n_conditions=n, n_seeds=k, **kw)["mean"]


def synthetic_verdicts(rng: np.random.Generator, *, k: int, n: int, dim: int = 4, shift: float = 0.0,
                       style_p: float = 0.5) -> Verdicts:
    return Verdicts(
        style_hit=(rng.random((k, n)) < style_p).astype(float),
        genre_hit=(rng.random((k, n)) < 0.3).astype(float),
        scores=rng.normal(50.0, 10.0, (k, n)),
        features=rng.normal(shift, 1.0, (k, n, dim)),
    )


# ---------------------------------------------------------------------------- bootstrap_intervals


def test_same_seed_same_interval_and_another_seed_another():
    table = np.random.default_rng(0).normal(size=(2, 50))
    assert mean_interval(table, seed=3) == mean_interval(table, seed=3)
    assert mean_interval(table, seed=3) != mean_interval(table, seed=4)


def test_interval_contains_the_point_estimate_and_narrows_as_n_grows():
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 80, 320):
        table = rng.normal(5.0, 2.0, (2, n))
        interval = mean_interval(table)
        assert interval["lo"] < table.mean() < interval["hi"]
        widths.append(interval["hi"] - interval["lo"])
    assert widths[0] > widths[1] > widths[2]
    one_seed = rng.normal(5.0, 2.0, (1, 320))  # conditions only: the plain bootstrap ≈ the normal-theory width
    interval = mean_interval(one_seed, replicates=1000)
    assert interval["hi"] - interval["lo"] == pytest.approx(2 * 1.96 * 2.0 / np.sqrt(320), rel=0.15)


def test_a_figure_that_cannot_vary_has_lo_equal_hi():
    interval = mean_interval(np.full((2, 30), 0.75))
    assert interval == {"lo": 0.75, "hi": 0.75}


def test_the_seed_dimension_is_resampled_too():
    # each seed's samples are all alike: only drawing seeds can move the mean
    by_seed = np.repeat([[0.0], [1.0]], 40, axis=1)  # (2, 40)
    interval = mean_interval(by_seed)
    assert interval["lo"] == 0.0 and interval["hi"] == 1.0
    # one seed: its resampling is a no-op, and the condition draws are those of the two-seed run
    one = np.random.default_rng(2).normal(size=(1, 40))
    assert mean_interval(one) == pytest.approx(mean_interval(np.concatenate([one, one])), rel=1e-12)


def test_none_and_nan_drop_out_and_a_figure_never_defined_has_no_interval():
    def statistic(conditions, seeds):
        return {"sometimes": float(conditions[0]) if conditions[0] % 2 else None, "never": None, "nan": np.nan}

    out = bootstrap_intervals(statistic, n_conditions=10, n_seeds=1, replicates=50)
    assert set(out) == {"sometimes"} and out["sometimes"]["lo"] % 2 == 1


def test_take_flattens_the_chosen_samples_and_ignores_seeds_for_one_seed_tables():
    table = np.arange(2 * 3 * 2).reshape(2, 3, 2)  # (k, n, D)
    chosen = take(table, np.array([2, 0]), np.array([1, 1]))
    assert chosen.tolist() == [[10, 11], [6, 7], [10, 11], [6, 7]]
    assert take(table[:1], np.array([1]), np.array([1, 1])).tolist() == [[2, 3]]  # one seed: seeds ignored
    assert take(table).shape == (6, 2)


# ---------------------------------------------------------------------------- the generation figures


@pytest.mark.parametrize(("n", "dim", "shift"), [(50, 4, 0.0), (30, 16, 1.5), (5, 8, 0.3), (40, 1, 2.0)])
def test_frechet_reference_matches_the_judges_frechet_distance(n, dim, shift):
    rng = np.random.default_rng(n + dim)
    a, b = rng.normal(shift, 1.0, (n, dim)) * rng.random(dim), rng.normal(size=(60, dim))
    assert FrechetReference(b).distance(a) == pytest.approx(frechet_distance(a, b), rel=1e-7, abs=1e-9)
    assert FrechetReference(b).distance(b) == pytest.approx(0.0, abs=1e-9)


def test_fd_is_recomputed_on_the_resampled_features():
    rng = np.random.default_rng(3)
    dim = 32  # as many dimensions as samples per seed, as the judge's features on the toy profile
    v, features = synthetic_verdicts(rng, k=2, n=30, dim=dim, shift=0.5), rng.normal(size=(200, dim))
    reference = FrechetReference(features)
    conditions, seeds = np.array([5, 5, 7, 1]), np.array([1, 0])
    resampled = v.features[[1, 0]][:, [5, 5, 7, 1]].reshape(-1, dim)
    assert judge_figures(v, reference, conditions, seeds)["fd_judge"] == pytest.approx(frechet_distance(resampled, features))
    point = judge_figures(v, reference)["fd_judge"]

    def statistic(c, s):
        return {"fd": judge_figures(v, reference, c, s)["fd_judge"]}

    raw = bootstrap_intervals(statistic, n_conditions=30, n_seeds=2)["fd"]
    assert raw["lo"] < raw["hi"] and raw["lo"] > point  # duplicates shrink the spread: the replicates sit above
    fixed = bootstrap_intervals(statistic, n_conditions=30, n_seeds=2, debias={"fd": point})["fd"]
    assert fixed["lo"] < point < fixed["hi"] and fixed["hi"] - fixed["lo"] == pytest.approx(raw["hi"] - raw["lo"])


def rows_and_pair(rng: np.random.Generator, *, k: int = 2, n: int = 40):
    rows = {"real_train": synthetic_verdicts(rng, k=1, n=n, style_p=0.9),
            "rq_prior": synthetic_verdicts(rng, k=k, n=n, shift=0.5),
            "rq_prior_norefine": synthetic_verdicts(rng, k=k, n=n, shift=0.6),
            "rq_marginal": synthetic_verdicts(rng, k=k, n=n, shift=2.0, style_p=0.1)}
    rows["rq_prior"].style_hit[:, :4] = np.nan  # styles the judge never saw
    return rows, (rng.normal(60.0, 5.0, (k, n)), rng.normal(45.0, 5.0, (k, n)))


def test_generation_figures_derive_the_rq_standing_from_the_same_samples():
    rng = np.random.default_rng(4)
    rows, pair = rows_and_pair(rng)
    reference = FrechetReference(rng.normal(size=(100, 4)))
    figures = generation_figures(rows, reference, score_pairs={"rq_prior": pair}, judge_style_acc=0.8)
    rq = figures["rq_prior"]
    assert rq["style_acc"] == pytest.approx(np.nanmean(rows["rq_prior"].style_hit))  # unknown styles left out
    assert rq["score_control"] == pytest.approx(pair[0].mean() - pair[1].mean())
    assert rq["style_acc_vs_real"] == pytest.approx(rq["style_acc"] / 0.8)
    floor, baseline = figures["real_train"]["fd_judge"], figures["rq_marginal"]["fd_judge"]
    assert rq["fd_position"] == pytest.approx((rq["fd_judge"] - floor) / (baseline - floor))


def test_generation_intervals_cover_every_row_and_figure_and_repeat_to_the_byte():
    rng = np.random.default_rng(5)
    rows, pair = rows_and_pair(rng)
    reference = FrechetReference(rng.normal(size=(100, 4)))
    kw = dict(score_pairs={"rq_prior": pair}, judge_style_acc=0.8, seed=0, replicates=50)
    intervals = generation_intervals(rows, reference, **kw)
    figures = generation_figures(rows, reference, score_pairs={"rq_prior": pair}, judge_style_acc=0.8)
    assert set(intervals) == set(rows)
    for row, values in figures.items():
        assert set(intervals[row]) == {name for name, value in values.items() if value is not None}, row
    rq = intervals["rq_prior"]
    assert {"score_control", "score_high", "score_low", "style_acc_vs_real", "fd_position"} <= set(rq)
    for row, values in figures.items():  # every interval holds its point estimate, the Fréchet ones included
        for name, value in values.items():
            if value is not None:
                assert intervals[row][name]["lo"] <= value <= intervals[row][name]["hi"], (row, name)
    assert json.dumps(generation_intervals(rows, reference, **kw)) == json.dumps(intervals)


def test_sampling_seeds_start_at_the_seed_and_stay_apart():
    assert sampling_seeds(7, 3) == [7, 10_007, 20_007] and sampling_seeds(7, 1) == [7]


def test_most_frequent_breaks_ties_by_first_appearance_and_skips_empty_names():
    assert most_frequent(["b", "a", "", "a", "c", "b", "", ""], 2) == ["b", "a"]
    assert most_frequent(["x"], 5) == ["x"]


# ---------------------------------------------------------------------------- through the generator's interface


class FakeGenerator:
    """The RQ generator's public interface only; its codes have a shape evaluate must not rely on."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def sample(self, *, styles, genres, scores, seed, guidance_scale, score_guidance_scale, temperature, top_k, desc=None):
        assert len(styles) == len(genres) == len(scores)
        self.calls.append(("sample", seed))
        return torch.randint(0, 9, (len(styles), 5, 3, 2), generator=torch.Generator().manual_seed(seed))

    def decode(self, codes, *, refine=True):
        flat = codes.reshape(len(codes), -1).float()
        base = (flat.sum(1) * (7 if refine else 3)) % 256  # (n,): images that depend on the codes
        return base[:, None, None, None].expand(-1, 3, 32, 32).to(torch.uint8).clone()

    def generate_marginal(self, train_codes, *, n, seed):
        self.calls.append(("marginal", seed))
        return self.decode(torch.randint(0, 9, (n, 5, 3, 2), generator=torch.Generator().manual_seed(seed)))


@pytest.fixture
def tiny_judge():
    from squeezegen.judge import Judge

    torch.manual_seed(0)
    return Judge(channels=[4, 8], image_size=32, styles=["Cubism", "Fauvism"], genres=["portrait", "landscape"]).eval()


def test_evaluate_rq_asks_each_seed_and_returns_seed_by_condition_tables(tiny_judge):
    gen = FakeGenerator()
    cond = Conditions(["Cubism", "Fauvism", "Unknown"] * 2, ["portrait", "landscape"] * 3, [20.0, 80.0] * 3)
    settings = SamplingSettings(seed=0, guidance_scale=2.0, score_guidance_scale=1.0, temperature=1.0, top_k=None)
    verdicts, (high, low), seconds, shown = evaluate_rq(gen, torch.zeros(1), cond, settings, tiny_judge, seeds=[0, 10_000])
    assert {seed for _, seed in gen.calls} == {0, 1, 10_000, 10_001}
    for v in verdicts.values():
        assert v.scores.shape == (2, 6) and v.features.shape == (2, 6, 8)
        assert np.isnan(v.style_hit[:, 2::3]).all() and not np.isnan(v.style_hit[:, :2]).any()
    assert high.shape == low.shape == (2, 6) and set(seconds) == {"rq_prior", "rq_prior_norefine"}
    assert shown["rq_prior"].shape == (6, 3, 32, 32) and shown["rq_prior"].dtype == torch.uint8


def test_style_genre_picture_has_a_row_per_style_and_a_column_per_genre(tiny_judge):
    gen = FakeGenerator()
    val = Conditions(["Cubism", "Fauvism", "Fauvism"], ["portrait", "landscape", "landscape"], [50.0] * 3)
    settings = SamplingSettings(seed=0, guidance_scale=2.0, score_guidance_scale=1.0, temperature=1.0, top_k=None)
    picture = style_genre_picture(gen, val, settings)
    assert gen.calls == [("sample", 3)]
    cell = 128  # labelled_grid shows small images at 128 px
    assert picture.size[0] == 90 + 2 * cell and picture.size[1] > 2 * cell


def test_every_generator_gets_its_own_score_control_and_standing_but_not_the_floor_or_baseline():
    rng = np.random.default_rng(6)
    rows, pair = rows_and_pair(rng)
    rows["sd"] = synthetic_verdicts(rng, k=2, n=40, shift=1.0)
    sd_pair = (rng.normal(55.0, 5.0, (2, 40)), rng.normal(50.0, 5.0, (2, 40)))
    reference = FrechetReference(rng.normal(size=(100, 4)))
    figures = generation_figures(rows, reference, score_pairs={"rq_prior": pair, "sd": sd_pair}, judge_style_acc=0.8)
    assert figures["sd"]["score_control"] == pytest.approx(sd_pair[0].mean() - sd_pair[1].mean())
    assert figures["sd"]["score_control"] != pytest.approx(figures["rq_prior"]["score_control"])
    assert figures["sd"]["style_acc_vs_real"] == pytest.approx(figures["sd"]["style_acc"] / 0.8)
    for name in ("real_train", "rq_marginal"):
        assert not {"score_control", "style_acc_vs_real", "fd_position"} & set(figures[name])
    assert "score_control" not in figures["rq_prior_norefine"] and "fd_position" in figures["rq_prior_norefine"]
    assert "fd_position" not in figures["sd"]  # the RQ branch's baseline does not move an SD figure
