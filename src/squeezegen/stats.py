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


class FrechetReference:
    """Fréchet distances to one fixed feature set (M, D), its statistics computed once.

    The same d² as `squeezegen.judge.frechet_distance` (float64, eigh-based, negative round-off
    clipped), in the symmetric form Tr((Σr^½ Σ Σr^½)^½) so that each distance costs one eigvalsh:
    the bootstrap asks for thousands.
    """

    def __init__(self, features: np.ndarray):
        ref = np.asarray(features, np.float64)
        if ref.ndim != 2 or len(ref) < 2:
            raise ValueError(f"reference features must be (M ≥ 2, D), got {ref.shape}")
        self.mean = ref.mean(0)  # (D,)
        self.cov = np.atleast_2d(np.cov(ref, rowvar=False))  # (D, D)
        vals, vecs = np.linalg.eigh(self.cov)
        self.cov_sqrt = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T  # Σr^½

    def distance(self, features: np.ndarray) -> float:
        """d² between Gaussians fitted to `features` (N ≥ 2, D) and to the reference."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or len(x) < 2 or x.shape[1] != len(self.mean):
            raise ValueError(f"features must be (N ≥ 2, {len(self.mean)}), got {x.shape}")
        cov = np.atleast_2d(np.cov(x, rowvar=False))  # (D, D)
        middle = self.cov_sqrt @ cov @ self.cov_sqrt
        cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
        distance = float(((x.mean(0) - self.mean) ** 2).sum() + np.trace(cov) + np.trace(self.cov) - 2 * cross)
        return max(distance, 0.0)  # round-off can leave -1e-12 for identical sets
