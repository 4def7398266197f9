"""One registry of the quantized GGUF types squeezegen writes and reads: Q2_K … Q6_K and Q8_0.

Each type is a small class (gguf-py's `quants.py` is the model): its block size and bytes per
block come from gguf's size table, and it knows how to quantize a chunk of blocks and decode
blocks in numpy and in torch. The policy, the GGUF writer and reader, the run-time layers and
`squeezegen inspect` all look types up here, so adding a type touches this file only.

The shared driver (`Codec.quantize`) gives every type the same guarantees:
- a last dimension that is not a multiple of the block size, NaN/Inf input, bad importance
  weights, or values too wide for fp16 super-scales raise UserError naming the tensor;
- no block decodes worse than an all-zero block: ggml's fp16 scales underflow on rows of
  magnitude ~1e-6, and such a block is stored as zeros instead (its error is then Σx² exactly);
- chunks of CHUNK_BLOCKS blocks run on worker threads (numpy releases the GIL), bounding the
  temporaries to a few MB per thread; the bytes do not depend on the chunking.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from squeezegen.errors import UserError
from squeezegen.quant.codecs import layouts as lay
from squeezegen.quant.codecs import q4k
from squeezegen.quant.codecs.fit import (
    AffineSpec,
    SymmetricSpec,
    fit_affine,
    fit_symmetric,
    fp16_step,
    scaled_importance,
)
from squeezegen.quant.codecs.q4k import decode_blocks_torch as q4k_decode_blocks_torch
from squeezegen.quant.codecs.q4k import dequantize_q4_k, quantize_q4_k, worker_threads

if TYPE_CHECKING:
    import torch

CHUNK_BLOCKS = 1024  # super-blocks (or Q8_0 blocks ×8) per work item
DEQUANT_CHUNK_BLOCKS = 8192  # blocks per torch decode step: bounds the float32 temporaries


class Codec:
    """One quantized GGUF type. Subclasses set `qtype` and implement the three block methods."""

    qtype: ClassVar[GGMLQuantizationType]
    block_size: ClassVar[int]
    type_size: ClassVar[int]
    chunk_blocks: ClassVar[int] = CHUNK_BLOCKS

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "qtype" in cls.__dict__:  # sizes come from gguf's table, never hard-coded
            cls.block_size, cls.type_size = GGML_QUANT_SIZES[cls.qtype]

    @property
    def name(self) -> str:
        return self.qtype.name

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.type_size / self.block_size

    def nbytes(self, n_elements: int) -> int:
        return n_elements // self.block_size * self.type_size

    # -- per type
    def encode_blocks(self, x: np.ndarray, importance: np.ndarray | None) -> np.ndarray:
        """x (B, block) float32, importance (B, block) or None → (B, type_size) uint8."""
        raise NotImplementedError

    def decode_blocks(self, blocks: np.ndarray) -> np.ndarray:
        """(B, type_size) uint8 → (B, block) float32, bit for bit what gguf's decoder returns."""
        raise NotImplementedError

    def decode_blocks_torch(self, blocks: torch.Tensor) -> torch.Tensor:
        """(B, type_size) uint8 tensor → (B, block) float32 tensor, equal to decode_blocks."""
        raise NotImplementedError

    # -- shared driver
    def quantize(self, x, *, importance=None, name: str = "tensor") -> np.ndarray:
        """Float array [..., block·n] → uint8 [..., type_size·n].

        `importance` (same shape, finite, ≥ 0; e.g. mean activation² per input channel) weights
        the least-squares searches, as ggml's importance matrix does.
        """
        rows = self._rows(x, "input", name)
        shape = np.shape(x)
        _check_finite(rows, f"{self.name}: tensor {name!r}", "fix or drop that tensor before quantizing")
        w_rows = None
        if importance is not None:
            if np.shape(importance) != shape:
                raise UserError(f"{self.name}: importance for {name!r} has shape {np.shape(importance)}, "
                                f"expected the tensor's shape {shape}.")
            w_rows = self._rows(importance, "importance", name)
            _check_finite(w_rows, f"{self.name}: importance for {name!r}", "pass finite weights")
            if (w_rows < 0).any():
                raise UserError(f"{self.name}: importance for {name!r} must be non-negative.")
        out = np.empty((rows.shape[0], self.type_size), dtype=np.uint8)

        def run(start: int) -> None:
            stop = start + self.chunk_blocks
            xc = rows[start:stop].astype(np.float32, copy=False)
            wc = None if w_rows is None else w_rows[start:stop].astype(np.float32, copy=False)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                out[start:stop] = self._zero_if_worse(xc, self.encode_blocks(xc, wc), name)

        starts = range(0, rows.shape[0], self.chunk_blocks)
        if len(starts) == 1 or worker_threads() == 1:
            for start in starts:
                run(start)
        else:
            with ThreadPoolExecutor(worker_threads()) as pool:
                list(pool.map(run, starts))
        return out.reshape(*shape[:-1], shape[-1] // self.block_size * self.type_size)

    def _zero_if_worse(self, x: np.ndarray, packed: np.ndarray, name: str) -> np.ndarray:
        """Blocks that decode worse than zeros (fp16 underflow on tiny rows) become all-zero bytes,
        which every type decodes to 0; a block that does not decode to finite values is an error."""
        y = self.decode_blocks(packed)
        if not np.isfinite(y).all():
            span = float(x.max()) - float(x.min())
            raise UserError(f"{self.name}: tensor {name!r} spans {span:.3g}, too wide for fp16 block "
                            "scales; keep it in F16/F32.")
        worse = ((x - y) ** 2).sum(axis=1) > (x * x).sum(axis=1)
        packed[worse] = 0
        return packed

    def _rows(self, x, what: str, name: str) -> np.ndarray:
        arr = np.asarray(x)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise UserError(f"{self.name}: {what} of tensor {name!r} has dtype {arr.dtype}; pass a float array.")
        if arr.ndim == 0 or arr.shape[-1] == 0 or arr.shape[-1] % self.block_size:
            raise UserError(
                f"{self.name}: tensor {name!r} has shape {arr.shape}; its last dimension must be a positive "
                f"multiple of {self.block_size}. Reshape it to rows of {self.block_size} or keep it unquantized."
            )
        return arr.reshape(-1, self.block_size)

    def _blocks(self, shape, ok: bool) -> None:
        if not ok or len(shape) == 0 or shape[-1] == 0 or shape[-1] % self.type_size:
            raise UserError(f"{self.name}: packed data must be uint8 with a last dimension that is a positive "
                            f"multiple of {self.type_size}; got shape {tuple(shape)}.")

    def dequantize(self, packed) -> np.ndarray:
        """uint8 [..., type_size·n] → float32 [..., block·n]."""
        packed = np.asarray(packed)
        self._blocks(packed.shape, packed.dtype == np.uint8)
        blocks = packed.reshape(-1, self.type_size)
        out = np.empty((blocks.shape[0], self.block_size), dtype=np.float32)
        for start in range(0, blocks.shape[0], DEQUANT_CHUNK_BLOCKS):
            out[start:start + DEQUANT_CHUNK_BLOCKS] = self.decode_blocks(blocks[start:start + DEQUANT_CHUNK_BLOCKS])
        return out.reshape(*packed.shape[:-1], packed.shape[-1] // self.type_size * self.block_size)

    def dequantize_torch(self, packed: torch.Tensor, dtype: torch.dtype | None = None, *,
                         chunk_blocks: int = DEQUANT_CHUNK_BLOCKS, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 tensor [..., type_size·n] (any device) → [..., block·n] in `dtype` (default float32);
        computed in float32, so it equals `dequantize` bit for bit before the cast. `out`
        (contiguous, as many elements, `dtype`) receives the weights instead of a new tensor."""
        import torch

        self._blocks(tuple(packed.shape), packed.dtype == torch.uint8)
        blocks = packed.reshape(-1, self.type_size)
        if out is None:
            out = torch.empty((blocks.shape[0], self.block_size), dtype=dtype or torch.float32, device=packed.device)
        else:
            out = out.view(blocks.shape[0], self.block_size)
        for start in range(0, blocks.shape[0], chunk_blocks):
            out[start:start + chunk_blocks] = self.decode_blocks_torch(blocks[start:start + chunk_blocks])
        return out.reshape(*packed.shape[:-1], packed.shape[-1] // self.type_size * self.block_size)

    def runtime_decode(self, packed: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
        """The decode the dequantizing layers run on every forward: the fastest exact one for the
        tensor's device (a type with a fused kernel overrides it; by default the torch decode),
        into `out` when given (a reused buffer: see `layers.decode_buffer`)."""
        return self.dequantize_torch(packed, dtype, out=out)


def _check_finite(rows: np.ndarray, what: str, fix: str) -> None:
    """Count NaN/Inf in chunks, so no full-size mask is allocated."""
    if np.issubdtype(rows.dtype, np.integer):
        return
    step = CHUNK_BLOCKS * 64
    bad = sum(int(c.size - np.isfinite(c).sum()) for c in (rows[i:i + step] for i in range(0, len(rows), step)))
    if bad:
        raise UserError(f"{what} has {bad} NaN/Inf value(s) out of {rows.size}; {fix}.")


class _Affine(Codec):
    spec: ClassVar[AffineSpec]

    def weights(self, x, importance):
        return scaled_importance(x, 1.0 if importance is None else importance, self.spec.sigma_factor)


class _Symmetric(Codec):
    spec: ClassVar[SymmetricSpec]

    def weights(self, x, importance):
        return scaled_importance(x, 1.0 if importance is None else importance, self.spec.sigma_factor)


class Q2_K(_Affine):
    """2.625 bits: 16 sub-blocks of 16, 2-bit levels, 4-bit scales and mins."""

    qtype = GGMLQuantizationType.Q2_K
    spec = AffineSpec(n_sub=16, sub=16, level_max=3, scale_max=15, grid=(-0.5, 0.1, 15), sigma_factor=2.0)

    def encode_blocks(self, x, importance):
        return lay.pack_q2_k(*fit_affine(x, self.weights(x, importance), self.spec))

    def decode_blocks(self, blocks):
        return lay.decode_q2_k(blocks)

    def decode_blocks_torch(self, blocks):
        return lay.decode_q2_k_torch(blocks)


class Q3_K(_Symmetric):
    """3.4375 bits: 16 sub-blocks of 16, levels −4..3, 6-bit signed scales."""

    qtype = GGMLQuantizationType.Q3_K
    spec = SymmetricSpec(n_sub=16, sub=16, level_neg=4, scale_neg=32, grid=(0.1, 9), sigma_factor=2.0)

    def encode_blocks(self, x, importance):
        return lay.pack_q3_k(*fit_symmetric(x, self.weights(x, importance), self.spec))

    def decode_blocks(self, blocks):
        return lay.decode_q3_k(blocks)

    def decode_blocks_torch(self, blocks):
        return lay.decode_q3_k_torch(blocks)


class Q4_K(Codec):
    """4.5 bits: 8 sub-blocks of 32, 4-bit levels, 6-bit scales and mins (codecs/q4k.py)."""

    qtype = GGMLQuantizationType.Q4_K

    def encode_blocks(self, x, importance):
        # without an importance matrix, q4k's own weighting (rms + |x|, ggml's reference) is used
        w = None if importance is None else scaled_importance(x, importance, 2.0)
        return quantize_q4_k(x, weights=w)

    def decode_blocks(self, blocks):
        return dequantize_q4_k(blocks)

    def decode_blocks_torch(self, blocks):
        return q4k_decode_blocks_torch(blocks)

    def runtime_decode(self, packed, dtype, out=None):
        decoder = q4k.q4k_decoder(packed.device)
        if decoder == "triton":
            from squeezegen.quant.codecs.q4k_triton import dequantize_q4_k_triton

            return dequantize_q4_k_triton(packed, dtype)
        if decoder == "native":
            from squeezegen.quant.codecs import q4k_native

            if q4k_native.supports(dtype):
                return q4k_native.dequantize_q4_k_native(packed, dtype, out=out)
        return self.dequantize_torch(packed, dtype, out=out)


class Q5_K(_Affine):
    """5.5 bits: 8 sub-blocks of 32, 5-bit levels, 6-bit scales and mins."""

    qtype = GGMLQuantizationType.Q5_K
    spec = AffineSpec(n_sub=8, sub=32, level_max=31, scale_max=63, grid=(-0.9, 0.05, 36), sigma_factor=2.0)

    def encode_blocks(self, x, importance):
        return lay.pack_q5_k(*fit_affine(x, self.weights(x, importance), self.spec))

    def decode_blocks(self, blocks):
        return lay.decode_q5_k(blocks)

    def decode_blocks_torch(self, blocks):
        return lay.decode_q5_k_torch(blocks)


class Q6_K(_Symmetric):
    """6.5625 bits: 16 sub-blocks of 16, levels −32..31, int8 scales."""

    qtype = GGMLQuantizationType.Q6_K
    spec = SymmetricSpec(n_sub=16, sub=16, level_neg=32, scale_neg=128, grid=(0.1, 9), sigma_factor=None)

    def encode_blocks(self, x, importance):
        return lay.pack_q6_k(*fit_symmetric(x, self.weights(x, importance), self.spec))

    def decode_blocks(self, blocks):
        return lay.decode_q6_k(blocks)

    def decode_blocks_torch(self, blocks):
        return lay.decode_q6_k_torch(blocks)


class Q8_0(Codec):
    """8.5 bits: blocks of 32, int8 levels, one fp16 scale (ggml's round-to-nearest)."""

    qtype = GGMLQuantizationType.Q8_0
    chunk_blocks = CHUNK_BLOCKS * 8

    def encode_blocks(self, x, importance):
        # the levels are rounded against the fp16-rounded scale (gguf rounds against the float32
        # one), so a subnormal scale on a tiny block still decodes close to the input
        d = fp16_step(np.abs(x).max(axis=1) / 127)[:, None]
        d16 = d[:, 0].astype(np.float16)
        q = np.clip(np.rint(np.divide(x, d, out=np.zeros_like(x), where=d > 0)), -127, 127)
        return lay.pack_q8_0(d16, q)

    def decode_blocks(self, blocks):
        return lay.decode_q8_0(blocks)

    def decode_blocks_torch(self, blocks):
        return lay.decode_q8_0_torch(blocks)


CODECS: dict[GGMLQuantizationType, Codec] = {c.qtype: c() for c in (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_0)}
QUANTIZED_TYPES: tuple[str, ...] = tuple(q.name for q in CODECS)


def codec(qtype: GGMLQuantizationType | str) -> Codec:
    """The codec for a type (enum or name); UserError for a type squeezegen does not handle."""
    try:
        key = GGMLQuantizationType[qtype] if isinstance(qtype, str) else GGMLQuantizationType(qtype)
        return CODECS[key]
    except (KeyError, ValueError):
        raise UserError(f"GGUF type {qtype!r} is not one squeezegen quantizes; choose one of "
                        f"{', '.join(QUANTIZED_TYPES)} (or F16/F32).") from None
