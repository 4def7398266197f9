"""Percentile bootstrap over conditions × sampling seeds: the 95% intervals of evaluate's `gen.*`.

A generator is asked for n conditions with each of k sampling seeds; its samples form a
(k, n) table. One bootstrap replicate draws n conditions and k seeds with replacement (two
independent streams, so with k = 1 the condition draws are those of a plain bootstrap) and
recomputes every figure on every (condition, seed) sample of the chosen ones.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Hashable, Mapping

import numpy as np

# bootstrap replicates: the toy table (6 rows × 96 conditions × 2 seeds) takes ~4 s on 2 CPU cores; the interval
# ends then move by ~3% of the interval's width from one bootstrap seed to another (200: ~6%)
REPLICATES = 1000
LEVEL = 0.95  # the interval's coverage


def take(values: np.ndarray, conditions: np.ndarray | None = None, seeds: np.ndarray | None = None) -> np.ndarray:
    """The chosen (seed, condition) samples of a (k, n, ...) table, flattened to (k'·n', ...).

    None chooses all; a table with one seed (real images: nothing was sampled) ignores `seeds`.
    """
    rows = values if seeds is None or len(values) == 1 else values[seeds]  # (k', n, ...)
    rows = rows if conditions is None else rows[:, conditions]  # (k', n', ...)
    return rows.reshape(-1, *values.shape[2:])


def one_blas_thread() -> contextlib.AbstractContextManager:
    """BLAS on one thread: (D, D) matrices gain nothing from threads and lose a lot on a busy CPU
    (measured 0.9 s vs 3-70 s for the toy table on 2 loaded cores); the numbers do not change."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn (requirements.lock)
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def bootstrap_intervals(
    statistic: Callable[[np.ndarray, np.ndarray], Mapping[Hashable, float | None]],
    *,
    n_conditions: int,
    n_seeds: int,
    replicates: int = REPLICATES,
    seed: int = 0,
    level: float = LEVEL,
    debias: Mapping[Hashable, float] | None = None,
) -> dict[Hashable, dict[str, float]]:
    """{figure: {"lo", "hi"}}: the percentile interval of each figure `statistic` returns.

    `statistic(conditions, seeds)` gets the indices one replicate drew (n_conditions and
    n_seeds of them, with replacement) and returns its figures; a None or NaN (a ratio whose
    baseline was 0, a style accuracy with no judgeable style drawn) drops out of that figure's
    replicates, and a figure with none left has no interval. `debias` holds the point estimates
    of figures that resampling itself biases (a Fréchet distance grows when duplicates shrink
    the sample's spread): their interval is shifted by point − mean of the replicates.
    Same inputs and seed → same bytes.
    """
    if n_conditions < 1 or n_seeds < 1 or replicates < 1 or not 0 < level < 1:
        raise ValueError(f"bootstrap needs ≥ 1 condition, seed and replicate and 0 < level < 1, got "
                         f"{n_conditions}, {n_seeds}, {replicates}, {level}")
    condition_rng, seed_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    draws: dict[Hashable, list[float]] = {}
    with one_blas_thread():
        for _ in range(replicates):
            conditions = condition_rng.integers(0, n_conditions, n_conditions)  # (n,)
            seeds = seed_rng.integers(0, n_seeds, n_seeds)  # (k,)
            for name, value in statistic(conditions, seeds).items():
                draws.setdefault(name, []).append(np.nan if value is None else float(value))
    tail = 100 * (1 - level) / 2
    out = {}
    for name, values in draws.items():
        finite = np.asarray(values)[np.isfinite(values)]
        if len(finite):
            shift = debias[name] - finite.mean() if debias and name in debias else 0.0
            lo, hi = np.percentile(finite, [tail, 100 - tail]) + shift
            out[name] = {"lo": float(lo), "hi": float(hi)}
    return out
