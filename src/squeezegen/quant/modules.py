"""Linear and Conv2d layers that keep GGUF-packed weights resident and dequantize in forward.

The packed bytes are a uint8 buffer named `weight` (so `.to(device)` moves them and the
state-dict key stays `<module>.weight`, as in diffusers); each forward decodes them to the
input's dtype, restores the true shape and calls F.linear / F.conv2d. diffusers' own GGUF
loader only swaps nn.Linear, so the conv variant (and Q4_K convs stored as rows of 256) is ours.

Every type of the codec registry (codecs.py) decodes in torch on any device. Q4_K weights on a
CUDA device decode with the fused Triton kernel (q4k_triton) when Triton is installed, else with
the torch decode; SQUEEZEGEN_Q4K_DECODE=torch forces the torch decode
(for comparisons), =triton makes a missing Triton an error instead of a silent fallback.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from gguf.constants import GGMLQuantizationType
from torch import nn

from squeezegen.errors import UserError
from squeezegen.quant.codecs import CODECS
from squeezegen.quant.q4k import dequantize_q4_k_torch

FLOAT_QTYPES = (GGMLQuantizationType.F16, GGMLQuantizationType.F32)


def dequantize_q8_0_torch(packed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Q8_0 bytes uint8 [..., 34·n] → dtype [..., 32·n].

    No torch library decodes Q8_0 (an fp16 scale d and 32 int8 values q per block, weight d·q):
    the codec registry's decode does it.
    """
    return CODECS[GGMLQuantizationType.Q8_0].dequantize_torch(packed, dtype)


DECODE_ENV = "SQUEEZEGEN_Q4K_DECODE"
DECODERS = ("auto", "torch", "triton")


def q4k_decoder(device: torch.device) -> str:
    """Which Q4_K decode runs for tensors on `device`: "triton" (CUDA + Triton) or "torch".

    Called on every forward; Triton is imported only when the kernel could be chosen, so CPU
    runs never pay for it.
    """
    choice = os.environ.get(DECODE_ENV, "auto").strip().lower() or "auto"
    if choice not in DECODERS:
        raise UserError(f"{DECODE_ENV}={choice!r}: choose one of {', '.join(DECODERS)}")
    if choice == "torch" or (choice == "auto" and device.type != "cuda"):
        return "torch"
    from squeezegen.quant import q4k_triton

    if not q4k_triton.available():
        if choice == "triton":
            raise UserError(f"{DECODE_ENV}=triton but Triton is not installed (pip install triton), "
                            f"or unset {DECODE_ENV} to use the torch decode")
        return "torch"
    return "triton" if device.type == "cuda" else "torch"


def dequantize_torch(
    packed: torch.Tensor, qtype: GGMLQuantizationType, shape: torch.Size | tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """Decode a stored GGUF tensor (uint8 bytes, or floats for F16/F32) to `dtype` of `shape`."""
    if qtype in FLOAT_QTYPES:
        weight = packed.to(dtype)
    elif qtype == GGMLQuantizationType.Q4_K:
        if q4k_decoder(packed.device) == "triton":
            from squeezegen.quant.q4k_triton import dequantize_q4_k_triton

            weight = dequantize_q4_k_triton(packed, dtype)
        else:
            weight = dequantize_q4_k_torch(packed, dtype)
    elif qtype in CODECS:  # every other registered type: the codec's torch decode (float32, then dtype)
        weight = CODECS[qtype].dequantize_torch(packed, dtype)
    else:
        raise NotImplementedError(f"no torch decoder for GGUF type {qtype.name}")
    return weight.reshape(shape)


class GGUFWeightModule(nn.Module):
    """Shared part of the dequantizing layers: a packed `weight` buffer and a float `bias`."""

    def __init__(
        self,
        *,
        packed: torch.Tensor,
        qtype: GGMLQuantizationType,
        weight_shape: tuple[int, ...],
        bias: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.qtype = GGMLQuantizationType(qtype)
        self.weight_shape = torch.Size(weight_shape)
        self.register_buffer("weight", packed)
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(bias, requires_grad=False)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight decoded to `dtype`, in its true shape."""
        return dequantize_torch(self.weight, self.qtype, self.weight_shape, dtype)

    def _bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.to(dtype)

    def extra_repr(self) -> str:
        return f"qtype={self.qtype.name}, weight_shape={tuple(self.weight_shape)}, bias={self.bias is not None}"


class GGUFLinear(GGUFWeightModule):
    """nn.Linear whose weight is stored packed and decoded on each call."""

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, *, packed: torch.Tensor, qtype: GGMLQuantizationType
    ) -> "GGUFLinear":
        """Replace `linear`'s weight by `packed`; its bias is kept (possibly still on meta)."""
        return cls(packed=packed, qtype=qtype, weight_shape=tuple(linear.weight.shape), bias=linear.bias)

    @property
    def in_features(self) -> int:
        return self.weight_shape[1]

    @property
    def out_features(self) -> int:
        return self.weight_shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dequantized_weight(x.dtype)  # [out, in]
        return F.linear(x, weight, self._bias(x.dtype))  # [..., out]


class GGUFConv2d(GGUFWeightModule):
    """nn.Conv2d whose weight is stored packed (often as rows of 256) and decoded on each call."""

    def __init__(
        self,
        *,
        packed: torch.Tensor,
        qtype: GGMLQuantizationType,
        weight_shape: tuple[int, ...],
        bias: torch.Tensor | None,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] | str = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        groups: int = 1,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(packed=packed, qtype=qtype, weight_shape=weight_shape, bias=bias)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.padding_mode = padding_mode

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, packed: torch.Tensor, qtype: GGMLQuantizationType) -> "GGUFConv2d":
        """Replace `conv`'s weight by `packed`, keeping its geometry and bias."""
        return cls(
            packed=packed,
            qtype=qtype,
            weight_shape=tuple(conv.weight.shape),
            bias=conv.bias,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            padding_mode=conv.padding_mode,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dequantized_weight(x.dtype)  # [out, in/groups, kh, kw]
        padding = self.padding
        if self.padding_mode != "zeros":  # as nn.Conv2d does: pad explicitly, then convolve unpadded
            ph, pw = self.padding
            x = F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode)
            padding = (0, 0)
        return F.conv2d(x, weight, self._bias(x.dtype), self.stride, padding, self.dilation, self.groups)


def module_resident_bytes(model: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (packed weights count at their packed size)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())
