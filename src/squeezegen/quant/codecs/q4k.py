"""Q4_K codec: ggml's 4.5-bit super-block format, with a vectorized quantizer.

Format (ggml's `block_q4_K`; sizes from gguf's table): a super-block of 256 weights is fp16 `d`,
fp16 `dmin`, 12 bytes packing eight 6-bit scales `sc` and eight 6-bit mins `m`, and 128 bytes of
4-bit levels `q`. Weight i of 32-weight sub-block j decodes to `(d·sc_j)·q_i − dmin·m_j`.

No Python library quantizes Q4_K (the `gguf` package only decodes it), hence this module. The
quantizer works on every block of a chunk at once (numpy, float32) and runs chunks on threads:
1. per sub-block, ggml's `make_qkx2_quants` search: weights w_i = rms(sub-block) + |x_i|; for 21
   grid points of the inverse scale, round to levels, then fit scale and min by weighted least
   squares (min ≤ 0); keep the lowest weighted squared error;
2. per super-block, ggml's 6-bit step: d = max scale / 63, dmin = max min / 63 (fp16), the eight
   scales and mins rounded against them, the levels recomputed with the final scales;
3. `method="refined"` (default) then runs REFINE_ROUNDS rounds of two format-preserving
   refinements, each kept only where it lowers the weighted error: re-fit each sub-block's
   scale and min on its levels and round them to the 6-bit grid; re-fit each super-block's d
   and dmin on the fixed 6-bit integers. `method="ggml"` stops after step 2: ggml's reference
   algorithm (errors come from sums in closed form and sums run in another order, so a few
   percent of blocks differ from the C code's bytes, at the same accuracy).

Exactness: a super-block whose 256 inputs all equal c decodes to float16(c) exactly, i.e. to c
itself whenever c is an fp16 number (0, ±1, 0.5, ...); an all-zero block decodes to zeros.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from squeezegen.errors import UserError
from squeezegen.quant.codecs.fit import Columns, affine_error, columns, level_sums

if TYPE_CHECKING:  # torch is imported lazily: the numpy codec does not need it
    import torch

QK_K, BLOCK_BYTES = GGML_QUANT_SIZES[GGMLQuantizationType.Q4_K]  # 256 weights -> 144 bytes
N_SUB = 8  # sub-blocks per super-block, each with a 6-bit scale and a 6-bit min
SUB = QK_K // N_SUB  # 32 weights per sub-block
SCALE_BYTES = 12  # the 16 six-bit numbers
HEADER_BYTES = 2 + 2 + SCALE_BYTES  # fp16 d, fp16 dmin, scales; then QK_K/2 bytes of nibbles
assert HEADER_BYTES + QK_K // 2 == BLOCK_BYTES
LEVEL_MAX = 15  # 4-bit levels 0..15
SCALE_MAX = 63  # 6-bit scales and mins 0..63
# ggml's grid of inverse scales: (LEVEL_MAX + GRID_START + GRID_STEP*k) / (max - min), k = 0..GRID_STEPS
GRID_START, GRID_STEP, GRID_STEPS = -1.0, 0.1, 20
REFINE_ROUNDS = 1  # alternations of the sub-block and super-block refinements
CHUNK_BLOCKS = 1024  # super-blocks per work item (256 Ki weights): ~10 MB of temporaries each
MAX_THREADS = 8  # worker threads at most (numpy releases the GIL inside its loops)

Method = Literal["refined", "ggml", "minmax"]
DECODE_ENV = "SQUEEZEGEN_Q4K_DECODE"  # torch: force the torch decode (comparisons); triton / native: a missing kernel is an error
DECODERS = ("auto", "torch", "triton", "native")


# ---------------------------------------------------------------- weighted fits (sub-block columns)
# Inside a chunk, x and w are (SUB, S): one column per sub-block, so the 32-long sums are adds of
# contiguous rows and every per-sub-block quantity is a length-S vector. Errors of candidate fits
# come from the level sums in closed form, so a candidate costs one pass over the levels.


def _lsq_scale_low(c: Columns, sl, sll, sxl):
    """Weighted least squares x ≈ scale·l + low with ggml's clamp low ≤ 0.

    Returns scale, low, their error and whether the fit is defined (levels not all equal); (S,).
    At the least-squares optimum the error reduces to Σwx² − scale·Σwxl − low·Σwx.
    """
    det = c.sw * sll - sl * sl
    scale = (c.sw * sxl - c.swx * sl) / det
    low = (sll * c.swx - sl * sxl) / det
    clamp = low > 0
    scale = np.where(clamp, sxl / sll, scale)
    low = np.where(clamp, 0, low)
    return scale, low, c.swxx - scale * sxl - low * c.swx, det > 0


def _fit_subblocks(c: Columns) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qkx2_quants on all sub-blocks -> scale (S,), low (S,) ≤ 0.

    As in ggml, each grid point rounds relative to the best min found so far (not the data's
    min): the search follows its own improvements, which measurably lowers the error.
    """
    top = c.x.max(axis=0)  # (S,)
    low = np.minimum(c.x.min(axis=0), 0)  # (S,)
    q = np.empty_like(c.x)

    def rounded_sums(inv_scale, low):  # round to levels for one inverse scale per column
        np.subtract(c.x, low, out=q)
        np.multiply(q, inv_scale, out=q)
        np.rint(q, out=q)
        np.clip(q, 0, LEVEL_MAX, out=q)
        return level_sums(c, q)

    def inverse_span(low):
        span = top - low
        return np.divide(1, span, out=np.zeros_like(span), where=span > 0)

    inv_span = inverse_span(low)
    best_scale = (top - low) / LEVEL_MAX  # the plain min/max fit is the starting point
    best_low = low
    best_err = affine_error(c, best_scale, -low, *rounded_sums(LEVEL_MAX * inv_span, low))
    for k in range(GRID_STEPS + 1):
        sums = rounded_sums((LEVEL_MAX + GRID_START + GRID_STEP * k) * inv_span, best_low)
        scale, fit_low, err, solvable = _lsq_scale_low(c, *sums)
        better = solvable & (err < best_err)
        if better.any():
            best_err = np.where(better, err, best_err)
            best_scale = np.where(better, scale, best_scale)
            best_low = np.where(better, fit_low, best_low)
            inv_span = inverse_span(best_low)
    return best_scale, best_low


def _nearest_levels(x: np.ndarray, step: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Levels nearest to x for value = step·q − offset: x (SUB, S); step, offset (S,)."""
    q = np.divide(x + offset, step, out=np.zeros_like(x), where=step != 0)  # (SUB, S)
    np.rint(q, out=q)
    return np.clip(q, 0, LEVEL_MAX, out=q)


def _to_six_bits(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """values (B, N_SUB) ≥ 0 -> fp16 super-scale (B,) = max/63 and integers (B, N_SUB) in 0..63."""
    top = values.max(axis=1)  # (B,)
    inv = np.divide(SCALE_MAX, top, out=np.zeros_like(top), where=top > 0)  # (B,)
    d16 = (top / SCALE_MAX).astype(np.float16)
    # Tiny rows (|x| ~ 1e-6): top/63 is an fp16 subnormal or underflows to 0. Round the integers
    # against the step actually stored (at least 2⁻²⁴), else the block decodes worse than zeros.
    sub = (d16 < np.float16(2.0**-14)) & (top > 0)
    d16 = np.where(sub & (d16 == 0), np.float16(2.0**-24), d16)
    inv = np.where(sub, np.divide(1, d16.astype(np.float32), out=inv.copy(), where=sub), inv)
    ints = np.clip(np.rint(values * inv[:, None]), 0, SCALE_MAX)  # (B, N_SUB)
    return d16, ints


def _per_column(v16: np.ndarray) -> np.ndarray:
    return np.repeat(v16.astype(np.float32), N_SUB)  # (B,) fp16 -> (S,) float32


def _refine(c: Columns, d16, dmin16, sc, m, q):
    """One round of the two refinements; each change is kept only where the weighted error falls.

    1. Each sub-block: least-squares scale and min on its current levels, rounded to the 6-bit
       grid of the fixed d and dmin, levels recomputed (sub-blocks are independent given d, dmin).
    2. Each super-block: least-squares d and dmin for x ≈ d·(sc·q) − dmin·m on the fixed
       integers (all sums follow from the sub-block sums), fp16-rounded, levels recomputed.
    d16, dmin16 (B,) fp16; sc, m (S,) float32 integers; q (SUB, S).
    """
    n_blocks = d16.shape[0]
    d, dmin = _per_column(d16), _per_column(dmin16)
    sums = level_sums(c, q)
    err = affine_error(c, d * sc, dmin * m, *sums)
    scale, low, _, solvable = _lsq_scale_low(c, *sums)
    new_sc = np.clip(np.rint(np.divide(scale, d, out=sc.copy(), where=d > 0)), 0, SCALE_MAX)
    new_m = np.clip(np.rint(np.divide(-low, dmin, out=m.copy(), where=dmin > 0)), 0, SCALE_MAX)
    new_q = _nearest_levels(c.x, d * new_sc, dmin * new_m)
    new_sums = level_sums(c, new_q)
    new_err = affine_error(c, d * new_sc, dmin * new_m, *new_sums)
    better = solvable & (new_err < err)  # (S,)
    sc, m = np.where(better, new_sc, sc), np.where(better, new_m, m)
    err = np.where(better, new_err, err)
    q = np.where(better, new_q, q)
    sl, sll, sxl = (np.where(better, new, old) for new, old in zip(new_sums, sums))

    def per_block(v):  # (S,) -> (B,) sums over each super-block's sub-blocks
        return v.reshape(n_blocks, N_SUB).sum(axis=1)

    saa, sxa, sab = per_block(sc * sc * sll), per_block(sc * sxl), per_block(sc * m * sl)
    sbb, sxb = per_block(m * m * c.sw), per_block(m * c.swx)
    det = saa * sbb - sab * sab
    new_d16 = ((sxa * sbb - sxb * sab) / det).astype(np.float16)  # (B,)
    new_dmin16 = ((sxa * sab - sxb * saa) / det).astype(np.float16)
    d, dmin = _per_column(new_d16), _per_column(new_dmin16)
    new_q = _nearest_levels(c.x, d * sc, dmin * m)
    new_err = affine_error(c, d * sc, dmin * m, *level_sums(c, new_q))
    better = (det > 0) & np.isfinite(new_d16) & np.isfinite(new_dmin16)
    better &= per_block(new_err) < per_block(err)
    q = np.where(np.repeat(better, N_SUB), new_q, q)
    return np.where(better, new_d16, d16), np.where(better, new_dmin16, dmin16), sc, m, q


# ---------------------------------------------------------------- one chunk


def _quantize_chunk(x: np.ndarray, w: np.ndarray | None, method: Method) -> np.ndarray:
    """x, w (B, QK_K) -> packed (B, BLOCK_BYTES) uint8."""
    n_blocks = x.shape[0]
    xt = np.ascontiguousarray(x.reshape(n_blocks * N_SUB, SUB).T, dtype=np.float32)  # (SUB, S)
    if method == "minmax":
        low = np.minimum(xt.min(axis=0), 0)
        scale = (xt.max(axis=0) - low) / LEVEL_MAX
    else:
        if w is None:  # ggml's default importance: rms of the sub-block plus |x|
            wt = np.sqrt((xt * xt).mean(axis=0)) + np.abs(xt)  # (SUB, S)
        else:
            wt = np.ascontiguousarray(w.reshape(n_blocks * N_SUB, SUB).T, dtype=np.float32)
        cols = columns(xt, wt)
        scale, low = _fit_subblocks(cols)
    d16, sc = _to_six_bits(np.maximum(scale, 0).reshape(n_blocks, N_SUB))
    dmin16, m = _to_six_bits(-low.reshape(n_blocks, N_SUB))
    sc, m = sc.reshape(-1), m.reshape(-1)  # (S,)
    q = _nearest_levels(xt, _per_column(d16) * sc, _per_column(dmin16) * m)  # (SUB, S)
    if method == "refined":
        for _ in range(REFINE_ROUNDS):
            d16, dmin16, sc, m, q = _refine(cols, d16, dmin16, sc, m, q)
    q = q.T.reshape(n_blocks, N_SUB, SUB)
    sc, m = sc.reshape(n_blocks, N_SUB), m.reshape(n_blocks, N_SUB)
    _encode_constant_blocks(x, d16, dmin16, sc, m, q)
    return _pack(d16, dmin16, sc.astype(np.uint8), m.astype(np.uint8), q.astype(np.uint8))


def _encode_constant_blocks(x, d16, dmin16, sc, m, q) -> None:
    """Overwrite (in place) super-blocks whose inputs are all equal c so they decode to fp16(c).

    c > 0: d = c, sc = 1, q = 1, no min. c < 0: dmin = −c, m = 1, d = 0. c = 0: all zero. Every
    product is exact, so the decoder returns fp16(c) bit for bit. Skipped if c overflows fp16.
    """
    const = x.min(axis=1) == x.max(axis=1)  # (B,)
    with np.errstate(over="ignore"):
        c16 = x[:, 0].astype(np.float16)
    const &= np.isfinite(c16)
    if not const.any():
        return
    pos, neg = const & (c16 > 0), const & (c16 < 0)
    d16[const] = np.where(pos[const], c16[const], 0)
    dmin16[const] = np.where(neg[const], -c16[const], 0)
    sc[const] = pos[const, None]
    m[const] = neg[const, None]
    q[const] = pos[const, None, None]


def _pack(d16, dmin16, sc, m, q) -> np.ndarray:
    """d16, dmin16 (B,) fp16; sc, m (B, N_SUB) uint8 ≤ 63; q (B, N_SUB, SUB) uint8 ≤ 15.

    Returns the (B, BLOCK_BYTES) ggml layout.
    """
    n_blocks = d16.shape[0]
    out = np.empty((n_blocks, BLOCK_BYTES), dtype=np.uint8)
    out[:, 0:2] = d16.astype("<f2").view(np.uint8).reshape(n_blocks, 2)
    out[:, 2:4] = dmin16.astype("<f2").view(np.uint8).reshape(n_blocks, 2)
    # scale bytes: 0-3 scales 0-3 (+ top 2 bits of scales 4-7), 4-7 mins 0-3 (+ top bits of mins
    # 4-7), 8-11 low nibbles of scales 4-7 | low nibbles of mins 4-7 << 4
    out[:, 4:8] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    out[:, 8:12] = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    out[:, 12:16] = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    # nibbles: byte 32k+l = sub-block 2k element l (low) | sub-block 2k+1 element l (high)
    out[:, HEADER_BYTES:] = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(n_blocks, QK_K // 2)
    return out


# ---------------------------------------------------------------- public API


def worker_threads() -> int:
    """Threads quantize_q4_k uses: the CPUs this process may run on, at most MAX_THREADS."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_THREADS))


def _as_rows(x, what: str, name: str) -> np.ndarray:
    """Validate the shape and return a (n_blocks, QK_K) view (or copy) of `x`, dtype unchanged."""
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise UserError(f"Q4_K: {what} of tensor {name!r} has dtype {arr.dtype}; pass a float array.")
    if arr.ndim == 0 or arr.shape[-1] == 0 or arr.shape[-1] % QK_K:
        raise UserError(
            f"Q4_K: tensor {name!r} has shape {arr.shape}; its last dimension must be a positive "
            f"multiple of {QK_K}. Reshape it to rows of {QK_K} or keep it unquantized."
        )
    return arr.reshape(-1, QK_K)


def _count_bad(rows: np.ndarray) -> int:
    """Number of NaN/Inf values, counted in chunks so no full-size mask is allocated."""
    if np.issubdtype(rows.dtype, np.integer):
        return 0
    step = CHUNK_BLOCKS * 64
    return sum(int(rows.shape[1] * len(c) - np.isfinite(c).sum()) for c in
               (rows[i:i + step] for i in range(0, rows.shape[0], step)))


def _quantize(x, weights, name: str, method: Method) -> np.ndarray:
    rows = _as_rows(x, "input", name)
    shape = np.shape(x)
    if bad := _count_bad(rows):
        raise UserError(
            f"Q4_K: tensor {name!r} has {bad} NaN/Inf value(s) out of {rows.size}; "
            "fix or drop that tensor before quantizing."
        )
    w_rows = None
    if weights is not None:
        if np.shape(weights) != shape:
            raise UserError(f"Q4_K: importance weights for {name!r} have shape {np.shape(weights)}, "
                            f"expected the tensor's shape {shape}.")
        w_rows = _as_rows(weights, "importance weights", name)
        if _count_bad(w_rows) or any((w_rows[i:i + CHUNK_BLOCKS] < 0).any()
                                     for i in range(0, w_rows.shape[0], CHUNK_BLOCKS)):
            raise UserError(f"Q4_K: importance weights for {name!r} must be finite and non-negative.")
    out = np.empty((rows.shape[0], BLOCK_BYTES), dtype=np.uint8)

    def run(start: int) -> None:
        stop = start + CHUNK_BLOCKS
        w = None if w_rows is None else w_rows[start:stop]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            out[start:stop] = _quantize_chunk(rows[start:stop].astype(np.float32, copy=False), w, method)

    starts = range(0, rows.shape[0], CHUNK_BLOCKS)
    if len(starts) == 1 or worker_threads() == 1:
        for start in starts:
            run(start)
    else:  # numpy releases the GIL inside its loops, so chunks overlap on several cores
        with ThreadPoolExecutor(worker_threads()) as pool:
            list(pool.map(run, starts))
    d_dmin = out[:, :4].copy().view("<f2")  # (n_blocks, 2)
    if not np.isfinite(d_dmin).all():
        raise UserError(
            f"Q4_K: tensor {name!r} spans {float(np.max(rows)) - float(np.min(rows)):.3g}, too wide "
            "for Q4_K's fp16 super-scales; keep it in F16/F32."
        )
    return out.reshape(*shape[:-1], shape[-1] // QK_K * BLOCK_BYTES)


def quantize_q4_k(x, *, weights=None, name: str = "tensor",
                  method: Literal["refined", "ggml"] = "refined") -> np.ndarray:
    """Quantize `x` (float array [..., 256·n]) to Q4_K bytes: uint8 [..., 144·n].

    `weights` (same shape, finite, ≥ 0) replaces ggml's per-weight importance rms + |x_i| in every
    weighted error (e.g. an activation-based importance). `method="ggml"` runs ggml's reference
    algorithm only, without the refinement. `name` labels the tensor in error messages.
    Memory beyond input and output: ~10-20 MB per worker thread (chunks of 256 Ki weights).
    Raises UserError for a last dimension that is not a multiple of 256, for NaN/Inf input, and
    for value ranges beyond fp16 super-scales (≈6e7).
    """
    if method not in ("refined", "ggml"):
        raise ValueError(f"unknown Q4_K method {method!r}")
    return _quantize(x, weights, name, method)


def quantize_q4_k_minmax(x, *, name: str = "tensor") -> np.ndarray:
    """Baseline Q4_K packer: per sub-block scale = (max − min)/15 and min = min(min(x), 0), then
    the same 6-bit super-scale step and nearest levels. Same format and errors as quantize_q4_k."""
    return _quantize(x, None, name, "minmax")


def _check_packed(shape, dtype_ok: bool) -> None:
    if not dtype_ok or len(shape) == 0 or shape[-1] == 0 or shape[-1] % BLOCK_BYTES:
        raise UserError(f"Q4_K: packed data must be uint8 with a last dimension that is a positive "
                        f"multiple of {BLOCK_BYTES}; got shape {tuple(shape)}.")


def dequantize_q4_k(packed) -> np.ndarray:
    """Decode Q4_K bytes uint8 [..., 144·n] to float32 [..., 256·n] (same values as gguf's)."""
    packed = np.asarray(packed)
    _check_packed(packed.shape, packed.dtype == np.uint8)
    blocks = packed.reshape(-1, BLOCK_BYTES)
    out = np.empty((blocks.shape[0], N_SUB, SUB), dtype=np.float32)
    step_rows = CHUNK_BLOCKS * 16
    for start in range(0, blocks.shape[0], step_rows):  # chunks bound the temporaries
        b = blocks[start:start + step_rows]
        d_dmin = b[:, :4].copy().view("<f2").astype(np.float32)  # (B, 2)
        low_sc, low_m, high = b[:, 4:8], b[:, 8:12], b[:, 12:16]
        sc = np.concatenate([low_sc & 0x3F, (high & 0x0F) | ((low_sc >> 2) & 0x30)], axis=1)
        m = np.concatenate([low_m & 0x3F, (high >> 4) | ((low_m >> 2) & 0x30)], axis=1)
        nib = b[:, HEADER_BYTES:].reshape(-1, N_SUB // 2, 1, SUB)
        q = np.concatenate([nib & 0x0F, nib >> 4], axis=2).reshape(-1, N_SUB, SUB)  # (B, 8, 32)
        step = d_dmin[:, :1] * sc.astype(np.float32)  # (B, 8), exact in float32
        offset = d_dmin[:, 1:] * m.astype(np.float32)
        out[start:start + step_rows] = step[:, :, None] * q.astype(np.float32) - offset[:, :, None]
    return out.reshape(*packed.shape[:-1], packed.shape[-1] // BLOCK_BYTES * QK_K)


def decode_blocks_torch(blocks: torch.Tensor) -> torch.Tensor:
    """(B, 144) uint8 → (B, 256) float32, on the blocks' device; exact products, so it equals
    `dequantize_q4_k` bit for bit (the registry's `Codec.dequantize_torch` drives it in chunks)."""
    import torch

    d_dmin = blocks[:, :4].contiguous().view(torch.float16).float()  # (B, 2)
    low_sc, low_m, high = blocks[:, 4:8], blocks[:, 8:12], blocks[:, 12:16]  # (B, 4) each
    sc = torch.cat([low_sc & 0x3F, (high & 0x0F) | ((low_sc >> 2) & 0x30)], dim=1).float()  # (B, 8)
    m = torch.cat([low_m & 0x3F, (high >> 4) | ((low_m >> 2) & 0x30)], dim=1).float()
    nib = blocks[:, HEADER_BYTES:].reshape(-1, N_SUB // 2, 1, SUB)  # (B, 4, 1, 32)
    q = torch.cat([nib & 0x0F, nib >> 4], dim=2).reshape(-1, N_SUB, SUB).float()  # (B, 8, 32)
    step = (d_dmin[:, :1] * sc).unsqueeze(-1)  # (B, 8, 1)
    offset = (d_dmin[:, 1:] * m).unsqueeze(-1)
    return (step * q - offset).reshape(-1, QK_K)  # (B, 256)


def q4k_decoder(device: torch.device) -> str:
    """Which Q4_K decode the layers run for tensors on `device`: "triton" (CUDA + Triton),
    "native" (the compiled CPU kernel, `codecs/q4k_native.py`) or "torch" (any device).

    Called on every forward; Triton is imported only when its kernel could be chosen, and the CPU
    kernel is built only when a CPU tensor needs it. Under "auto" a missing kernel falls back to
    the torch decode (same bits); a kernel named in $SQUEEZEGEN_Q4K_DECODE must be there.
    """
    choice = os.environ.get(DECODE_ENV, "auto").strip().lower() or "auto"
    if choice not in DECODERS:
        raise UserError(f"{DECODE_ENV}={choice!r}: choose one of {', '.join(DECODERS)}")
    kernel = {"cuda": "triton", "cpu": "native"}.get(device.type)
    if choice == "torch" or kernel is None or choice not in ("auto", kernel):
        return "torch"  # a kernel named for the other device type does not apply here
    if kernel == "triton":
        from squeezegen.quant.codecs import q4k_triton as module

        missing = "Triton is not installed (pip install triton)"
    else:
        from squeezegen.quant.codecs import q4k_native as module

        missing = "the CPU kernel could not be built (no C compiler? see the warning above)"
    if module.available():
        return kernel
    if choice == kernel:
        raise UserError(f"{DECODE_ENV}={kernel} but {missing}; unset {DECODE_ENV} to use the torch decode")
    return "torch"
