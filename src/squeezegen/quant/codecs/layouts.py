"""Byte layouts of Q2_K, Q3_K, Q5_K, Q6_K and Q8_0 blocks: pack, and decode in numpy and torch.

The layouts are ggml's (`block_q2_K` … in ggml-common.h); gguf-py's `quants.py` decodes them
and is the oracle. Our decoders do the same float32 operations in the same order as gguf's
((d·scale)·q − dmin·min), so they agree bit for bit; the torch ones run on any device.

Several fields interleave values as bit planes: 32 (or 64) consecutive values fill the low bits
of 32 (64) bytes, the next 32 the following bits, and so on. `pack_planes` / `unpack_planes`
express that once: values (B, G, planes, W) ↔ bytes (B, G, W).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

QK_K = 256


def pack_planes(v: np.ndarray, bits: int) -> np.ndarray:
    """(B, G, planes, W) small ints → (B, G, W) uint8: plane k in bits [bits·k, bits·(k+1))."""
    v = v.astype(np.uint8)
    out = v[:, :, 0].copy()
    for k in range(1, v.shape[2]):
        out |= v[:, :, k] << np.uint8(bits * k)
    return out


def unpack_planes(b: np.ndarray, planes: int, bits: int) -> np.ndarray:
    """(B, G, W) uint8 → (B, G, planes, W) uint8 (inverse of pack_planes)."""
    shifts = (np.arange(planes, dtype=np.uint8) * bits).reshape(1, 1, planes, 1)
    return (b[:, :, None, :] >> shifts) & np.uint8((1 << bits) - 1)


def _unpack_planes_torch(b: torch.Tensor, planes: int, bits: int) -> torch.Tensor:
    import torch

    shifts = (torch.arange(planes, dtype=torch.uint8, device=b.device) * bits).reshape(1, 1, planes, 1)
    return (b[:, :, None, :] >> shifts) & ((1 << bits) - 1)


def _f16(b) -> np.ndarray:
    """(B, 2) uint8 → (B, 1) float32."""
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def _f16_torch(b: torch.Tensor) -> torch.Tensor:
    import torch

    return b.contiguous().view(torch.float16).float()


def _f16_bytes(v16: np.ndarray) -> np.ndarray:
    return v16.astype("<f2").reshape(-1, 1).view(np.uint8)


# ---------------------------------------------------------------- Q2_K: scales(16) qs(64) d dmin


def pack_q2_k(d16, dmin16, sc, m, q) -> np.ndarray:
    """sc, m (B, 16) in 0..15; q (B, 16, 16) in 0..3 → (B, 84)."""
    n = d16.shape[0]
    scales = (sc.astype(np.uint8) | (m.astype(np.uint8) << 4))
    qs = pack_planes(q.reshape(n, 2, 4, 32), 2).reshape(n, 64)
    return np.concatenate([scales, qs, _f16_bytes(d16), _f16_bytes(dmin16)], axis=1)


def decode_q2_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (b[:, :16] & 0xF).astype(np.float32)).reshape(n, 16, 1)
    ml = (dmin * (b[:, :16] >> 4).astype(np.float32)).reshape(n, 16, 1)
    q = unpack_planes(b[:, 16:80].reshape(n, 2, 32), 4, 2).reshape(n, 16, 16).astype(np.float32)
    return (dl * q - ml).reshape(n, QK_K)


def decode_q2_k_torch(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16_torch(b[:, 80:82]), _f16_torch(b[:, 82:84])
    dl = (d * (b[:, :16] & 0xF).float()).reshape(n, 16, 1)
    ml = (dmin * (b[:, :16] >> 4).float()).reshape(n, 16, 1)
    q = _unpack_planes_torch(b[:, 16:80].reshape(n, 2, 32), 4, 2).reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, QK_K)


# ---------------------------------------------------------------- Q3_K: hmask(32) qs(64) scales(12) d


def pack_q3_k(d16, sc, q) -> np.ndarray:
    """sc (B, 16) in −32..31; q (B, 16, 16) in −4..3 → (B, 110)."""
    n = d16.shape[0]
    u = (q.reshape(n, QK_K) + 4).astype(np.uint8)  # 0..7
    hmask = pack_planes((u >> 2).reshape(n, 1, 8, 32), 1).reshape(n, 32)
    qs = pack_planes((u & 3).reshape(n, 2, 4, 32), 2).reshape(n, 64)
    s = (sc + 32).astype(np.uint8)  # 0..63
    low = (s[:, :8] & 0xF) | ((s[:, 8:] & 0xF) << 4)  # bytes 0-7: scale j | scale j+8 << 4
    high = pack_planes((s >> 4).reshape(n, 1, 4, 4), 2).reshape(n, 4)  # byte 8+i: scale 4k+i at bits 2k
    return np.concatenate([hmask, qs, low, high, _f16_bytes(d16)], axis=1)


def decode_q3_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    d = _f16(b[:, 108:110])
    low = unpack_planes(b[:, 96:104].reshape(n, 1, 8), 2, 4).reshape(n, 16)
    high = unpack_planes(b[:, 104:108].reshape(n, 1, 4), 4, 2).reshape(n, 16)
    scales = ((low | (high << 4)).astype(np.int8) - np.int8(32)).astype(np.float32)
    dl = (d * scales).reshape(n, 16, 1)
    ql = unpack_planes(b[:, 32:96].reshape(n, 2, 32), 4, 2).reshape(n, 16, 16)
    qh = unpack_planes(b[:, :32].reshape(n, 1, 32), 8, 1).reshape(n, 16, 16)
    q = (ql.astype(np.int8) - ((qh ^ 1) << 2).astype(np.int8)).astype(np.float32)
    return (dl * q).reshape(n, QK_K)


def decode_q3_k_torch(b: torch.Tensor) -> torch.Tensor:
    import torch

    n = b.shape[0]
    d = _f16_torch(b[:, 108:110])
    low = _unpack_planes_torch(b[:, 96:104].reshape(n, 1, 8), 2, 4).reshape(n, 16)
    high = _unpack_planes_torch(b[:, 104:108].reshape(n, 1, 4), 4, 2).reshape(n, 16)
    scales = ((low | (high << 4)).to(torch.int16) - 32).float()
    dl = (d * scales).reshape(n, 16, 1)
    ql = _unpack_planes_torch(b[:, 32:96].reshape(n, 2, 32), 4, 2).reshape(n, 16, 16)
    qh = _unpack_planes_torch(b[:, :32].reshape(n, 1, 32), 8, 1).reshape(n, 16, 16)
    q = (ql.to(torch.int16) - ((qh ^ 1) << 2).to(torch.int16)).float()
    return (dl * q).reshape(n, QK_K)


# ---------------------------------------------------------------- Q4_K / Q5_K 6-bit scales and mins


def pack_scale_min_k4(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins (B, 8) → 12 bytes (ggml's get_scale_min_k4 layout)."""
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    return np.concatenate([
        sc[:, :4] | ((sc[:, 4:] >> 4) << 6),
        m[:, :4] | ((m[:, 4:] >> 4) << 6),
        (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4),
    ], axis=1)  # fmt: skip


def unpack_scale_min_k4(s):
    """(B, 12) uint8 → sc, m (B, 8); works on numpy arrays and torch tensors alike."""
    lib = np if isinstance(s, np.ndarray) else __import__("torch")
    low_sc, low_m, high = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    cat = np.concatenate if lib is np else lib.cat
    sc = cat([low_sc & 0x3F, (high & 0x0F) | ((low_sc >> 2) & 0x30)], 1)
    m = cat([low_m & 0x3F, (high >> 4) | ((low_m >> 2) & 0x30)], 1)
    return sc, m


# ---------------------------------------------------------------- Q5_K: d dmin scales(12) qh(32) qs(128)


def pack_q5_k(d16, dmin16, sc, m, q) -> np.ndarray:
    """sc, m (B, 8) in 0..63; q (B, 8, 32) in 0..31 → (B, 176)."""
    n = d16.shape[0]
    q = q.astype(np.uint8)
    qh = pack_planes((q >> 4).reshape(n, 1, 8, 32), 1).reshape(n, 32)
    qs = pack_planes((q & 0xF).reshape(n, 4, 2, 32), 4).reshape(n, 128)
    return np.concatenate([_f16_bytes(d16), _f16_bytes(dmin16), pack_scale_min_k4(sc, m), qh, qs], axis=1)


def decode_q5_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, m = unpack_scale_min_k4(b[:, 4:16])
    dl = (d * sc.astype(np.float32)).reshape(n, 8, 1)
    ml = (dmin * m.astype(np.float32)).reshape(n, 8, 1)
    ql = unpack_planes(b[:, 48:176].reshape(n, 4, 32), 2, 4).reshape(n, 8, 32)
    qh = unpack_planes(b[:, 16:48].reshape(n, 1, 32), 8, 1).reshape(n, 8, 32)
    return (dl * (ql | (qh << 4)).astype(np.float32) - ml).reshape(n, QK_K)


def decode_q5_k_torch(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16_torch(b[:, 0:2]), _f16_torch(b[:, 2:4])
    sc, m = unpack_scale_min_k4(b[:, 4:16])
    dl = (d * sc.float()).reshape(n, 8, 1)
    ml = (dmin * m.float()).reshape(n, 8, 1)
    ql = _unpack_planes_torch(b[:, 48:176].reshape(n, 4, 32), 2, 4).reshape(n, 8, 32)
    qh = _unpack_planes_torch(b[:, 16:48].reshape(n, 1, 32), 8, 1).reshape(n, 8, 32)
    return (dl * (ql | (qh << 4)).float() - ml).reshape(n, QK_K)


# ---------------------------------------------------------------- Q6_K: ql(128) qh(64) scales(16 int8) d


def pack_q6_k(d16, sc, q) -> np.ndarray:
    """sc (B, 16) in −128..127; q (B, 16, 16) in −32..31 → (B, 210)."""
    n = d16.shape[0]
    u = (q.reshape(n, QK_K) + 32).astype(np.uint8)  # 0..63
    ql = pack_planes((u & 0xF).reshape(n, 2, 2, 64), 4).reshape(n, 128)
    qh = pack_planes((u >> 4).reshape(n, 2, 4, 32), 2).reshape(n, 64)
    scales = sc.astype(np.int8).view(np.uint8)
    return np.concatenate([ql, qh, scales, _f16_bytes(d16)], axis=1)


def decode_q6_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    d = _f16(b[:, 208:210])
    dl = (d * b[:, 192:208].view(np.int8).astype(np.float32)).reshape(n, 16, 1)
    ql = unpack_planes(b[:, :128].reshape(n, 2, 64), 2, 4).reshape(n, 2, 128)
    qh = unpack_planes(b[:, 128:192].reshape(n, 2, 32), 4, 2).reshape(n, 2, 128)
    q = ((ql | (qh << 4)).astype(np.int8) - np.int8(32)).astype(np.float32).reshape(n, 16, 16)
    return (dl * q).reshape(n, QK_K)


def decode_q6_k_torch(b: torch.Tensor) -> torch.Tensor:
    import torch

    n = b.shape[0]
    d = _f16_torch(b[:, 208:210])
    dl = (d * b[:, 192:208].contiguous().view(torch.int8).float()).reshape(n, 16, 1)
    ql = _unpack_planes_torch(b[:, :128].reshape(n, 2, 64), 2, 4).reshape(n, 2, 128)
    qh = _unpack_planes_torch(b[:, 128:192].reshape(n, 2, 32), 4, 2).reshape(n, 2, 128)
    q = ((ql | (qh << 4)).to(torch.int16) - 32).float().reshape(n, 16, 16)
    return (dl * q).reshape(n, QK_K)


# ---------------------------------------------------------------- Q8_0: d qs(32 int8)


def pack_q8_0(d16, q) -> np.ndarray:
    """d16 (B,) fp16; q (B, 32) in −127..127 → (B, 34)."""
    return np.concatenate([_f16_bytes(d16), q.astype(np.int8).view(np.uint8)], axis=1)


def decode_q8_0(b: np.ndarray) -> np.ndarray:
    return b[:, 2:].view(np.int8).astype(np.float32) * _f16(b[:, :2])


def decode_q8_0_torch(b: torch.Tensor) -> torch.Tensor:
    import torch

    return b[:, 2:].contiguous().view(torch.int8).float() * _f16_torch(b[:, :2])
