"""Q4_K decode as one fused Triton kernel (CUDA), for the dequantize-in-forward layers.

The torch decode (`q4k.decode_blocks_torch`) is a chain of ~20 elementwise kernels with float32 temporaries;
every UNet forward runs it over all ~860 M weights, which made a 512 px SD 1.5 image ~10×
slower than fp16 on an H100. This kernel reads each super-block's 144 bytes once and writes the
256 weights straight in the compute dtype: one launch per layer and no temporaries. No library
decodes Q4_K on the GPU from PyTorch (gguf-py is numpy; diffusers' GGUF path is plain torch),
hence this file.

Exactness: d·sc and dmin·m are products of an fp16 number and a 6-bit integer, and (d·sc)·q of
that and a 4-bit one, so all are exact in float32; the one rounding is the final subtraction,
with or without a fused multiply-add. The result therefore equals `dequantize_q4_k` (numpy)
and `gguf.quants.dequantize` bit for bit before the cast to the output dtype, as the torch
decode does.

`available()` says whether the kernel can run (Triton importable); with TRITON_INTERPRET=1 set
before import, the kernel also runs on CPU tensors through Triton's interpreter (how the tests
check it on machines without a GPU). Which decode the layers run is `q4k.q4k_decoder`'s choice.
"""

from __future__ import annotations

import torch

from squeezegen.quant.codecs.q4k import BLOCK_BYTES, QK_K

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: callers use the torch decode instead
    triton = None

ELEMENTS_PER_PROGRAM = 2048  # 8 super-blocks per program


def available() -> bool:
    """True when Triton is importable (the caller still needs a CUDA tensor, or the interpreter)."""
    return triton is not None


if triton is not None:

    @triton.jit
    def _q4k_decode_kernel(src_ptr, dst_ptr, n_elements, BLOCK: tl.constexpr):
        # One output weight per lane: super-block b, weight w = 32·j + i of sub-block j.
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_elements
        b = offs // 256
        w = offs % 256
        j = w // 32
        i = w % 32
        base = src_ptr + b * 144
        # fp16 d and dmin, little-endian, at bytes 0-1 and 2-3.
        d_bits = tl.load(base, mask=mask, other=0).to(tl.uint16) | (tl.load(base + 1, mask=mask, other=0).to(tl.uint16) << 8)
        m_bits = tl.load(base + 2, mask=mask, other=0).to(tl.uint16) | (tl.load(base + 3, mask=mask, other=0).to(tl.uint16) << 8)
        d = d_bits.to(tl.float16, bitcast=True).to(tl.float32)
        dmin = m_bits.to(tl.float16, bitcast=True).to(tl.float32)
        # Six-bit scale and min of sub-block j (ggml's get_scale_min_k4): bytes 4..15 hold
        # low_sc[0:4], low_m[0:4], high[0:4]; sub-blocks 4..7 take their top 2 bits from low_*.
        k = j % 4
        low_sc = tl.load(base + 4 + k, mask=mask, other=0).to(tl.int32)
        low_m = tl.load(base + 8 + k, mask=mask, other=0).to(tl.int32)
        high = tl.load(base + 12 + k, mask=mask, other=0).to(tl.int32)
        first = j < 4
        sc = tl.where(first, low_sc & 0x3F, (high & 0x0F) | ((low_sc >> 6) << 4))
        mn = tl.where(first, low_m & 0x3F, (high >> 4) | ((low_m >> 6) << 4))
        # Levels: sub-blocks 2p and 2p+1 share bytes 16 + 32p .. +32 (low nibble, high nibble).
        byte = tl.load(base + 16 + (j // 2) * 32 + i, mask=mask, other=0).to(tl.int32)
        q = tl.where(j % 2 == 0, byte & 0x0F, byte >> 4)
        value = (d * sc.to(tl.float32)) * q.to(tl.float32) - dmin * mn.to(tl.float32)
        tl.store(dst_ptr + offs, value.to(dst_ptr.dtype.element_ty), mask=mask)


def dequantize_q4_k_triton(packed: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Decode Q4_K bytes (uint8 [..., 144·n], CUDA) to [..., 256·n] in `dtype` (default float32)."""
    if triton is None:
        raise RuntimeError("Triton is not installed; use the registry's torch decode (codec(\"Q4_K\").dequantize_torch)")
    blocks = packed.reshape(-1, BLOCK_BYTES).contiguous()  # (B, 144)
    out = torch.empty(blocks.shape[0] * QK_K, dtype=dtype or torch.float32, device=packed.device)
    n = out.numel()
    if n:
        grid = (triton.cdiv(n, ELEMENTS_PER_PROGRAM),)
        _q4k_decode_kernel[grid](blocks, out, n, BLOCK=ELEMENTS_PER_PROGRAM)
    return out.reshape(*packed.shape[:-1], packed.shape[-1] // BLOCK_BYTES * QK_K)
