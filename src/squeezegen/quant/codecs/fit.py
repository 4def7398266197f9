"""Vectorized least-squares searches behind the K-quant codecs (Q2_K, Q3_K, Q5_K, Q6_K).

No Python library quantizes K-quants (gguf-py only decodes them), so the searches are ours; the
ideas are ggml's (`ggml-quants.c`), rewritten to work on every block of a chunk at once. Two
families share the super-block of 256 weights, split into `n_sub` sub-blocks of `sub` weights:

- affine (Q2_K, Q4_K, Q5_K): weight = (d·sc_j)·q − dmin·m_j with levels q in 0..level_max and
  unsigned integer scales sc_j, mins m_j in 0..scale_max under fp16 super-scales d, dmin;
- symmetric (Q3_K, Q6_K): weight = (d·sc_j)·q with signed levels q in −n..n−1 and signed integer
  scales sc_j under one fp16 super-scale d.

Each fit runs in three steps, all minimizing the same weighted squared error Σ w·(x − x̂)²:
1. per sub-block, a grid search over inverse scales, each candidate followed by a weighted
   least-squares fit of scale (and min) on its rounded levels (ggml's make_qkx3 / make_qx);
2. per super-block, the sub-block scales are put on an integer grid under one fp16 step chosen
   by a small weighted search (ggml's make_qp / make_qx on the scales, weighted by Σw per sub-block)
   — the integers are rounded against the *fp16-rounded* step, which keeps tiny rows
   (|x| ≈ 1e-6, where the step is an fp16 subnormal) meaningful;
3. REFINE_ROUNDS rounds of two format-preserving refinements, each kept only where it lowers
   the error: re-fit each sub-block's scale (and min) on its levels and re-round it to the grid;
   re-fit each super-block's fp16 step(s) on the fixed integers.

Arrays inside a chunk are columns: x and w are (sub, S) with S = blocks·n_sub, so every sum over
a sub-block is a reduction over the first axis and every per-sub-block quantity is an (S,) vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

REFINE_ROUNDS = 2  # alternations of the sub-block and super-block refinements


@dataclass(frozen=True)
class AffineSpec:
    """A scale-and-min K-quant: sub-block shape, level and scale ranges, search grid."""

    n_sub: int  # sub-blocks per super-block
    sub: int  # weights per sub-block
    level_max: int  # levels 0..level_max
    scale_max: int  # integer scales and mins 0..scale_max
    grid: tuple[float, float, int]  # inverse scales (level_max + start + step·k)/(max − min), k = 0..n
    sigma_factor: float  # default importance: sqrt(sigma_factor·mean(x²) + x²) per super-block


@dataclass(frozen=True)
class SymmetricSpec:
    """A scale-only K-quant with signed levels −level_neg..level_neg−1 and signed scales."""

    n_sub: int
    sub: int
    level_neg: int  # levels −level_neg..level_neg−1 (Q3_K 4, Q6_K 32)
    scale_neg: int  # integer scales −scale_neg..scale_neg−1 (Q3_K 32, Q6_K 128)
    grid: tuple[float, int]  # inverse scales −(level_neg + step·k)/max_signed, k = −n..n
    sigma_factor: float | None  # default importance sqrt(f·mean(x²) + x²); None: uniform


class Columns(NamedTuple):
    x: np.ndarray  # (sub, S) inputs
    w: np.ndarray  # (sub, S) importance
    wx: np.ndarray  # (sub, S) w·x
    sw: np.ndarray  # (S,) Σw
    swx: np.ndarray  # (S,) Σwx
    swxx: np.ndarray  # (S,) Σwx²


def columns(x: np.ndarray, w: np.ndarray) -> Columns:
    wx = w * x
    return Columns(x, w, wx, w.sum(axis=0), wx.sum(axis=0), np.einsum("ij,ij->j", wx, x))


def to_columns(a: np.ndarray, n_sub: int, sub: int) -> np.ndarray:
    """(B, 256) → (sub, B·n_sub) float32, one column per sub-block."""
    return np.ascontiguousarray(a.reshape(-1, sub).T, dtype=np.float32)


def default_importance(x: np.ndarray, sigma_factor: float | None) -> np.ndarray:
    """ggml's weighting with an all-ones importance matrix: sqrt(f·mean(x²) + x²) per super-block
    (uniform when f is None). It favours the larger weights, which dominate the squared error."""
    if sigma_factor is None:
        return np.ones_like(x)
    sigma2 = sigma_factor * (x * x).mean(axis=1, keepdims=True)  # (B, 1)
    return np.sqrt(sigma2 + x * x)


def scaled_importance(x: np.ndarray, importance: np.ndarray, sigma_factor: float | None) -> np.ndarray:
    """An importance matrix (e.g. mean activation²) times ggml's magnitude term, as ggml does."""
    return importance * default_importance(x, sigma_factor)


def level_sums(c: Columns, q: np.ndarray):
    """Σwl, Σwl², Σwxl per column for levels q (sub, S)."""
    wq = c.w * q
    return wq.sum(axis=0), np.einsum("ij,ij->j", wq, q), np.einsum("ij,ij->j", c.wx, q)


def _safe_div(a, b):
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape, dtype=np.float32), where=b != 0)


def _blocks(v: np.ndarray, n_sub: int) -> np.ndarray:
    """(S,) → per super-block sums (B,)."""
    return v.reshape(-1, n_sub).sum(axis=1)


# ---------------------------------------------------------------- integer scales under an fp16 step


FP16_TINY = np.float32(2.0**-24)  # the smallest positive fp16 (subnormal)


def fp16_step(step: np.ndarray) -> np.ndarray:
    """fp16-rounded step as float32, never rounded to zero: a nonzero step that would underflow
    (rows of magnitude ~1e-6) becomes ±2⁻²⁴, and the integers then absorb the difference."""
    step16 = step.astype(np.float16).astype(np.float32)
    return np.where((step16 == 0) & (step != 0), np.copysign(FP16_TINY, step), step16)


def _grid_scales(v, sw, step, lo, hi):
    """Integers for values v (B, n) under step (B,) (fp16-rounded first) and their Σsw·err²."""
    step16 = fp16_step(step)
    ints = np.clip(np.rint(_safe_div(v, step16[:, None])), lo, hi)
    return step16, ints, (sw * (v - step16[:, None] * ints) ** 2).sum(axis=1)


def quantize_scales(v: np.ndarray, sw: np.ndarray, lo: int, hi: int, top: int, grid) -> tuple[np.ndarray, np.ndarray]:
    """Put each super-block's sub-block scales v (B, n) on an integer grid lo..hi under one fp16 step.

    Candidate steps are max_signed/(top + g) for g in `grid` (the signed max maps to ±top, as in
    ggml's make_qp/make_qx), each also re-fit by weighted least squares on its integers; the
    candidate with the lowest Σ sw·(v − step·int)² wins. Returns fp16 steps (B,) and integers (B, n).
    """
    idx = np.abs(v).argmax(axis=1)
    vmax = np.take_along_axis(v, idx[:, None], axis=1)[:, 0]  # signed value of largest magnitude
    if lo < 0:
        vmax = -vmax  # symmetric: the largest scale maps to the extra negative integer
    best_step, best_ints, best_err = _grid_scales(v, sw, _safe_div(vmax, np.float32(top)), lo, hi)
    for g in grid:
        step = _safe_div(vmax, np.float32(top + g))
        for s in (step, None):
            if s is None:  # weighted least-squares step on the integers just found
                s = _safe_div((sw * v * ints).sum(axis=1), (sw * ints * ints).sum(axis=1))
            step16, ints, err = _grid_scales(v, sw, s, lo, hi)
            better = np.isfinite(step16) & (err < best_err)
            best_step = np.where(better, step16, best_step)
            best_ints = np.where(better[:, None], ints, best_ints)
            best_err = np.where(better, err, best_err)
    return best_step.astype(np.float16), best_ints


# ---------------------------------------------------------------- affine family


def affine_error(c, step, offset, sl, sll, sxl):
    """Σ w·(step·l − offset − x)² per column, from the sums."""
    return (step * step * sll - 2 * step * offset * sl + offset * offset * c.sw
            - 2 * step * sxl + 2 * offset * c.swx + c.swxx)


def _affine_lsq(c, sl, sll, sxl):
    """Weighted least squares x ≈ scale·l + low with low ≤ 0 (ggml's clamp); (S,) each."""
    det = c.sw * sll - sl * sl
    scale = _safe_div(c.sw * sxl - c.swx * sl, det)
    low = _safe_div(sll * c.swx - sl * sxl, det)
    clamp = low > 0
    scale = np.where(clamp, _safe_div(sxl, sll), scale)
    low = np.where(clamp, 0, low)
    return scale, low, det > 0


def _affine_levels(x, step, offset, level_max):
    q = _safe_div(x + offset, step)
    return np.clip(np.rint(q, out=q), 0, level_max, out=q)


def _search_affine(c: Columns, spec: AffineSpec):
    """Per sub-block grid search → scale (S,), low (S,) ≤ 0."""
    top = c.x.max(axis=0)
    low = np.minimum(c.x.min(axis=0), 0)
    span = top - low
    inv_span = _safe_div(np.float32(1), span)
    start, step, n = spec.grid
    best_scale = span / spec.level_max
    best_low = low
    q = _affine_levels(c.x, best_scale, -low, spec.level_max)
    best_err = affine_error(c, best_scale, -low, *level_sums(c, q))
    for k in range(n + 1):
        q = np.clip(np.rint((c.x - low) * ((spec.level_max + start + step * k) * inv_span)), 0, spec.level_max)
        sums = level_sums(c, q)
        scale, fit_low, ok = _affine_lsq(c, *sums)
        err = affine_error(c, scale, -fit_low, *sums)
        better = ok & (err < best_err)
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        best_low = np.where(better, fit_low, best_low)
    return best_scale, best_low


def _refine_affine(c: Columns, spec: AffineSpec, d16, dmin16, sc, m, q):
    """One round of both refinements (affine); each kept only where the weighted error falls."""
    rep = lambda v: np.repeat(v.astype(np.float32), spec.n_sub)  # noqa: E731  (B,) → (S,)
    d, dmin = rep(d16), rep(dmin16)
    sums = level_sums(c, q)
    err = affine_error(c, d * sc, dmin * m, *sums)
    scale, low, ok = _affine_lsq(c, *sums)
    new_sc = np.clip(np.rint(_safe_div(scale, d)), 0, spec.scale_max)
    new_m = np.clip(np.rint(_safe_div(-low, dmin)), 0, spec.scale_max)
    new_q = _affine_levels(c.x, d * new_sc, dmin * new_m, spec.level_max)
    new_sums = level_sums(c, new_q)
    new_err = affine_error(c, d * new_sc, dmin * new_m, *new_sums)
    better = ok & (new_err < err)
    sc, m, q = np.where(better, new_sc, sc), np.where(better, new_m, m), np.where(better, new_q, q)
    err = np.where(better, new_err, err)
    sl, sll, sxl = (np.where(better, a, b) for a, b in zip(new_sums, sums))

    # super-block: x ≈ d·(sc·q) − dmin·m on the fixed integers, a 2×2 least squares per block
    n = spec.n_sub
    saa, sxa, sab = _blocks(sc * sc * sll, n), _blocks(sc * sxl, n), _blocks(sc * m * sl, n)
    sbb, sxb = _blocks(m * m * c.sw, n), _blocks(m * c.swx, n)
    det = saa * sbb - sab * sab
    with np.errstate(over="ignore"):
        new_d16 = _safe_div(sxa * sbb - sxb * sab, det).astype(np.float16)
        new_dmin16 = _safe_div(sxa * sab - sxb * saa, det).astype(np.float16)
    d, dmin = rep(new_d16), rep(new_dmin16)
    new_q = _affine_levels(c.x, d * sc, dmin * m, spec.level_max)
    new_err = affine_error(c, d * sc, dmin * m, *level_sums(c, new_q))
    better = (det > 0) & np.isfinite(new_d16) & np.isfinite(new_dmin16) & (new_d16 >= 0) & (new_dmin16 >= 0)
    better &= _blocks(new_err, n) < _blocks(err, n)
    q = np.where(np.repeat(better, n), new_q, q)
    return np.where(better, new_d16, d16), np.where(better, new_dmin16, dmin16), sc, m, q


def fit_affine(x: np.ndarray, w: np.ndarray, spec: AffineSpec):
    """x, w (B, 256) float32 → d16, dmin16 (B,) fp16; sc, m (B, n_sub); q (B, n_sub, sub) (floats)."""
    n_blocks = x.shape[0]
    c = columns(to_columns(x, spec.n_sub, spec.sub), to_columns(w, spec.n_sub, spec.sub))
    scale, low = _search_affine(c, spec)
    sw = c.sw.reshape(n_blocks, spec.n_sub)
    grid = (-0.4, -0.3, -0.2, -0.1, 0.1, 0.2, 0.3, 0.4)
    d16, sc = quantize_scales(np.maximum(scale, 0).reshape(n_blocks, -1), sw, 0, spec.scale_max, spec.scale_max, grid)
    dmin16, m = quantize_scales(-low.reshape(n_blocks, -1), sw, 0, spec.scale_max, spec.scale_max, grid)
    sc, m = sc.reshape(-1), m.reshape(-1)
    rep = lambda v: np.repeat(v.astype(np.float32), spec.n_sub)  # noqa: E731
    q = _affine_levels(c.x, rep(d16) * sc, rep(dmin16) * m, spec.level_max)
    for _ in range(REFINE_ROUNDS):
        d16, dmin16, sc, m, q = _refine_affine(c, spec, d16, dmin16, sc, m, q)
    q = q.T.reshape(n_blocks, spec.n_sub, spec.sub)
    return d16, dmin16, sc.reshape(n_blocks, -1), m.reshape(n_blocks, -1), q


# ---------------------------------------------------------------- symmetric family


def _sym_error(c, step, sll, sxl):
    return step * step * sll - 2 * step * sxl + c.swxx


def _sym_levels(x, step, spec: SymmetricSpec):
    q = _safe_div(x, step)
    return np.clip(np.rint(q, out=q), -spec.level_neg, spec.level_neg - 1, out=q)


def _search_symmetric(c: Columns, spec: SymmetricSpec) -> np.ndarray:
    """Per sub-block: the largest-magnitude weight maps near −level_neg; → scale (S,)."""
    idx = np.abs(c.x).argmax(axis=0)
    vmax = np.take_along_axis(c.x, idx[None, :], axis=0)[0]  # (S,) signed
    step, n = spec.grid
    best_score = np.full(vmax.shape, -1.0, dtype=np.float32)
    best_scale = np.zeros_like(vmax)
    for k in range(-n, n + 1):
        inv = _safe_div(np.float32(-(spec.level_neg + step * k)), vmax)
        q = np.clip(np.rint(c.x * inv), -spec.level_neg, spec.level_neg - 1)
        _, sll, sxl = level_sums(c, q)
        score = _safe_div(sxl * sxl, sll)  # error = Σwx² − score at the least-squares scale
        better = (sll > 0) & (score > best_score)
        best_score = np.where(better, score, best_score)
        best_scale = np.where(better, _safe_div(sxl, sll), best_scale)
    return best_scale


def _refine_symmetric(c: Columns, spec: SymmetricSpec, d16, sc, q):
    n = spec.n_sub
    d = np.repeat(d16.astype(np.float32), n)
    _, sll, sxl = level_sums(c, q)
    err = _sym_error(c, d * sc, sll, sxl)
    new_sc = np.clip(np.rint(_safe_div(_safe_div(sxl, sll), d)), -spec.scale_neg, spec.scale_neg - 1)
    new_q = _sym_levels(c.x, d * new_sc, spec)
    _, new_sll, new_sxl = level_sums(c, new_q)
    new_err = _sym_error(c, d * new_sc, new_sll, new_sxl)
    better = new_err < err
    sc, q, err = np.where(better, new_sc, sc), np.where(better, new_q, q), np.where(better, new_err, err)
    sll, sxl = np.where(better, new_sll, sll), np.where(better, new_sxl, sxl)

    with np.errstate(over="ignore"):
        new_d16 = _safe_div(_blocks(sc * sxl, n), _blocks(sc * sc * sll, n)).astype(np.float16)
    d = np.repeat(new_d16.astype(np.float32), n)
    new_q = _sym_levels(c.x, d * sc, spec)
    _, new_sll, new_sxl = level_sums(c, new_q)
    new_err = _sym_error(c, d * sc, new_sll, new_sxl)
    better = np.isfinite(new_d16) & (_blocks(new_err, n) < _blocks(err, n))
    q = np.where(np.repeat(better, n), new_q, q)
    return np.where(better, new_d16, d16), sc, q


def fit_symmetric(x: np.ndarray, w: np.ndarray, spec: SymmetricSpec):
    """x, w (B, 256) float32 → d16 (B,) fp16; sc (B, n_sub) signed; q (B, n_sub, sub) signed (floats)."""
    n_blocks = x.shape[0]
    c = columns(to_columns(x, spec.n_sub, spec.sub), to_columns(w, spec.n_sub, spec.sub))
    scale = _search_symmetric(c, spec).reshape(n_blocks, -1)
    sw = c.sw.reshape(n_blocks, spec.n_sub)
    grid = tuple(spec.grid[0] * k for k in range(-spec.grid[1], spec.grid[1] + 1) if k)
    d16, sc = quantize_scales(scale, sw, -spec.scale_neg, spec.scale_neg - 1, spec.scale_neg, grid)
    sc = sc.reshape(-1)
    q = _sym_levels(c.x, np.repeat(d16.astype(np.float32), spec.n_sub) * sc, spec)
    for _ in range(REFINE_ROUNDS):
        d16, sc, q = _refine_symmetric(c, spec, d16, sc, q)
    return d16, sc.reshape(n_blocks, -1), q.T.reshape(n_blocks, spec.n_sub, spec.sub)
