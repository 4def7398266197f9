"""Which GGUF type each UNet tensor is stored as: the tensor policy (docs/compression.md).

Rules, in order:

1. keep `keep_type` (F16 or F32) for tensors matching a keep pattern (time/class/add
   embeddings, `conv_in`, `conv_out`, norms, biases), for tensors with fewer than two
   dimensions and for tensors of at most `min_elements` elements;
2. the type `tensor_types` names for the tensor (a budget allocation), if any;
   else `unet_type` when the last (row) dimension is a multiple of that type's block size;
3. with `reshape_convs`, `unet_type` again when the element count is a multiple of the block
   size: the tensor is stored as rows of one block and its true shape is recorded
   (ComfyUI-GGUF's `comfy.gguf.orig_shape.<name>`). This is what lets 3×3 convs (and narrow
   Linears such as SD 1.5's 320-wide attention) be Q4_K;
4. otherwise `fallback_type`, by the same two rules with its own block size, else `keep_type`.

Block sizes come from `gguf.constants.GGML_QUANT_SIZES`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from squeezegen.errors import ConfigError
from squeezegen.quant.codecs.registry import QUANTIZED_TYPES  # the codec registry: every type we write

FLOAT_TYPES = ("F16", "F32")
# a fallback holds what a 256-weight super-block cannot, so only smaller blocks qualify (Q8_0)
FALLBACK_TYPES = tuple(t for t in QUANTIZED_TYPES if GGML_QUANT_SIZES[GGMLQuantizationType[t]][0] < 256)

DEFAULT_KEEP_PATTERNS = (
    r"(^|\.)time_embedding\.",
    r"(^|\.)(class_embedding|add_embedding|add_time_proj)\.",
    r"^conv_in\.",
    r"^conv_out\.",
    r"(^|\.)[^.]*norm[^.]*\.",  # any module whose name contains "norm" (norm1, conv_norm_out, ...)
    r"\.bias$",
)


@dataclass(frozen=True)
class QuantPolicy:
    """Per-tensor type choice for the UNet GGUF file.

    unet_type: type for the bulk of the weights (any registered type, Q2_K … Q8_0, or F16).
    fallback_type: type for a weight `unet_type` cannot hold (Q8_0, F16 or F32).
    keep_type: type for tensors kept unquantized ("F16" or "F32").
    keep_patterns: regexes (re.search on the diffusers key) of tensors kept as `keep_type`.
    min_elements: tensors with at most this many elements are kept as `keep_type`.
    reshape_convs: store a tensor whose row length is not a multiple of the block size (every
        3×3 conv, narrow Linears) as rows of one block, recording its true shape.
    tensor_types: {diffusers name: type} chosen per tensor (the budget allocation); it overrides
        `unet_type` for tensors the keep rules leave quantizable, and must fit their blocks.
    importance: {diffusers name: E[x²] per input channel} that weights the codecs' searches
        (quant/mix/importance.py). Not part of the file's policy JSON: it changes the bytes chosen,
        never which type or shape a tensor has.
    """

    unet_type: str = "Q4_K"
    fallback_type: str = "Q8_0"
    keep_type: str = "F16"
    keep_patterns: tuple[str, ...] = DEFAULT_KEEP_PATTERNS
    min_elements: int = 1024
    reshape_convs: bool = True
    tensor_types: Mapping[str, str] = field(default_factory=dict)
    importance: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_choice("unet_type", self.unet_type, QUANTIZED_TYPES + ("F16",))
        object.__setattr__(self, "tensor_types", dict(sorted(self.tensor_types.items())))
        for name, qtype in self.tensor_types.items():
            if qtype not in QUANTIZED_TYPES + FLOAT_TYPES:
                raise ConfigError(f"QuantPolicy.tensor_types[{name!r}] must be one of "
                                  f"{', '.join(QUANTIZED_TYPES + FLOAT_TYPES)}; got {qtype!r}.")
        _check_choice("fallback_type", self.fallback_type, FALLBACK_TYPES + FLOAT_TYPES)
        _check_choice("keep_type", self.keep_type, FLOAT_TYPES)
        if self.min_elements < 0:
            raise ConfigError(f"QuantPolicy.min_elements must be >= 0, got {self.min_elements}.")
        object.__setattr__(self, "keep_patterns", tuple(self.keep_patterns))
        for pattern in self.keep_patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ConfigError(f"QuantPolicy.keep_patterns: {pattern!r} is not a valid regex ({err}).") from err

    def to_json(self) -> str:
        """The policy as a JSON string (stored in the GGUF metadata), without the importance."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "importance"}
        fields["keep_patterns"] = list(self.keep_patterns)
        if not self.tensor_types:  # a uniform policy's JSON stays what it was before allocations existed
            del fields["tensor_types"]
        return json.dumps(fields, sort_keys=True)


def _check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"QuantPolicy.{field} must be one of {', '.join(allowed)}; got {value!r}.")


@dataclass(frozen=True)
class TensorPlan:
    """How one tensor is stored.

    qtype: the GGUF type. stored_shape: the shape written to the file (torch order).
    orig_shape: the true shape when the tensor was reshaped into rows, else None.
    reason: a short human-readable reason for the choice.
    """

    name: str
    qtype: GGMLQuantizationType
    stored_shape: tuple[int, ...]
    orig_shape: tuple[int, ...] | None
    reason: str

    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor's true shape (torch order)."""
        return self.orig_shape if self.orig_shape is not None else self.stored_shape

    @property
    def n_params(self) -> int:
        return math.prod(self.stored_shape)

    @property
    def nbytes(self) -> int:
        """Bytes the tensor takes in the file (without alignment padding)."""
        return tensor_nbytes(self.qtype, self.n_params)


def block_size(qtype: GGMLQuantizationType) -> int:
    """Weights per block of `qtype` (1 for float types)."""
    return GGML_QUANT_SIZES[qtype][0]


def tensor_nbytes(qtype: GGMLQuantizationType, n_elements: int) -> int:
    """Bytes `n_elements` weights take when stored as `qtype`."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    if n_elements % block:
        raise ValueError(f"{n_elements} elements are not a whole number of {qtype.name} blocks ({block}).")
    return n_elements // block * type_size


def _fit(name: str, shape: tuple[int, ...], qtype_name: str, reshape: bool) -> TensorPlan | None:
    """A plan storing `shape` as `qtype_name`, reshaping into rows if allowed; None if it cannot."""
    qtype = GGMLQuantizationType[qtype_name]
    block = block_size(qtype)
    numel = math.prod(shape)
    if shape[-1] % block == 0:
        return TensorPlan(name, qtype, shape, None, f"{qtype_name}: rows of {shape[-1]}")
    if reshape and numel % block == 0:
        return TensorPlan(name, qtype, (numel // block, block), shape, f"{qtype_name}: reshaped to rows of {block}")
    return None


def choose_type(name: str, shape: tuple[int, ...] | list[int], policy: QuantPolicy) -> TensorPlan:
    """The storage plan for tensor `name` of (torch-order) `shape` under `policy`."""
    shape = tuple(int(d) for d in shape)
    numel = math.prod(shape)
    keep = GGMLQuantizationType[policy.keep_type]
    for pattern in policy.keep_patterns:
        if re.search(pattern, name):
            return TensorPlan(name, keep, shape, None, f"kept: matches {pattern}")
    if len(shape) < 2:
        return TensorPlan(name, keep, shape, None, f"kept: {len(shape)}-D")
    if numel <= policy.min_elements:
        return TensorPlan(name, keep, shape, None, f"kept: {numel} <= {policy.min_elements} elements")
    if name in policy.tensor_types:
        chosen = policy.tensor_types[name]
        if chosen in FLOAT_TYPES:
            return TensorPlan(name, GGMLQuantizationType[chosen], shape, None, "allocated")
        plan = _fit(name, shape, chosen, policy.reshape_convs)
        if plan is None:
            raise ValueError(f"tensor {name!r} of shape {shape} cannot be stored as {chosen}: "
                             f"no whole blocks of {block_size(GGMLQuantizationType[chosen])}")
        return dataclasses.replace(plan, reason=f"allocated {plan.reason}")
    if policy.unet_type in FLOAT_TYPES:
        return TensorPlan(name, GGMLQuantizationType[policy.unet_type], shape, None, "unet_type")

    plan = _fit(name, shape, policy.unet_type, policy.reshape_convs)
    if plan is not None:
        return plan
    if policy.fallback_type in FLOAT_TYPES:
        qtype = GGMLQuantizationType[policy.fallback_type]
        return TensorPlan(name, qtype, shape, None, f"fallback: no whole {policy.unet_type} blocks")
    plan = _fit(name, shape, policy.fallback_type, policy.reshape_convs)
    if plan is not None:
        return dataclasses.replace(plan, reason=f"fallback {plan.reason}")
    return TensorPlan(name, keep, shape, None, "kept: no whole blocks of any quantized type")


def fits(shape: tuple[int, ...] | list[int], qtype_name: str, policy: QuantPolicy) -> bool:
    """Whether a tensor of `shape` can be stored as `qtype_name` (whole blocks, reshaped if allowed)."""
    if qtype_name in FLOAT_TYPES:
        return True
    return _fit("", tuple(int(d) for d in shape), qtype_name, policy.reshape_convs) is not None


def is_kept(name: str, shape: tuple[int, ...] | list[int], policy: QuantPolicy) -> bool:
    """Whether the keep rules (patterns, rank < 2, ≤ min_elements) hold the tensor unquantized."""
    shape = tuple(int(d) for d in shape)
    return (any(re.search(p, name) for p in policy.keep_patterns) or len(shape) < 2
            or math.prod(shape) <= policy.min_elements)
