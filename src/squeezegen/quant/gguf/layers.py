"""Linear and Conv2d layers that keep GGUF-packed weights resident and dequantize in forward.

The packed bytes are a uint8 buffer named `weight` (so `.to(device)` moves them and the
state-dict key stays `<module>.weight`, as in diffusers); each forward decodes them to the
input's dtype, restores the true shape and calls F.linear / F.conv2d. diffusers' own GGUF
loader only swaps nn.Linear, so the conv variant (and Q4_K convs stored as rows of 256) is ours.

Each forward decodes through the codec registry's `runtime_decode`: the torch decode on any
device, or a type's fused kernel where it has one (Q4_K: `codecs/q4k_triton.py` on CUDA,
`codecs/q4k_native.py` on a CPU). On a CPU, without autograd, every layer decodes into one
reused buffer (`decode_buffer`): a fresh tensor per layer and forward costs more than the
decode itself there (allocations above glibc's mmap threshold are new pages each time, every
one a page fault).
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from gguf.constants import GGMLQuantizationType
from torch import nn

from squeezegen.quant.codecs.registry import CODECS

FLOAT_QTYPES = (GGMLQuantizationType.F16, GGMLQuantizationType.F32)


def dequantize_torch(
    packed: torch.Tensor, qtype: GGMLQuantizationType, shape: torch.Size | tuple[int, ...], dtype: torch.dtype,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode a stored GGUF tensor (uint8 bytes, or floats for F16/F32) to `dtype` of `shape`,
    into `out` (contiguous, as many elements) when given and the type is a quantized one."""
    if qtype in FLOAT_QTYPES:
        weight = packed.to(dtype)
    elif qtype in CODECS:
        weight = CODECS[qtype].runtime_decode(packed, dtype, out=out)
    else:
        raise NotImplementedError(f"no torch decoder for GGUF type {qtype.name}")
    return weight.reshape(shape)


class _Buffers(threading.local):
    def __init__(self) -> None:
        self.by_dtype: dict[torch.dtype, torch.Tensor] = {}


_BUFFERS = _Buffers()


def decode_buffer(n_elements: int, dtype: torch.dtype) -> torch.Tensor:
    """A flat CPU tensor of `n_elements`, shared by every layer's decode in this thread (grown to
    the largest weight seen: SD 1.5's is 29.5 M weights). Whatever it holds is overwritten by the
    next decode, so only a forward, which consumes its weight at once, may use it."""
    buffer = _BUFFERS.by_dtype.get(dtype)
    if buffer is None or buffer.numel() < n_elements:
        buffer = _BUFFERS.by_dtype[dtype] = torch.empty(n_elements, dtype=dtype)
    return buffer[:n_elements]


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

    def dequantized_weight(self, dtype: torch.dtype, *, reuse_buffer: bool = False) -> torch.Tensor:
        """The weight decoded to `dtype`, in its true shape. `reuse_buffer`: into `decode_buffer`
        when that is safe (a quantized CPU weight, no autograd); only for immediate use."""
        out = None
        if (reuse_buffer and self.weight.device.type == "cpu" and self.qtype in CODECS
                and not torch.is_grad_enabled()):
            out = decode_buffer(self.weight_shape.numel(), dtype)
        return dequantize_torch(self.weight, self.qtype, self.weight_shape, dtype, out=out)

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
        weight = self.dequantized_weight(x.dtype, reuse_buffer=True)  # [out, in]
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
        weight = self.dequantized_weight(x.dtype, reuse_buffer=True)  # [out, in/groups, kh, kw]
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
