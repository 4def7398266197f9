"""How much each UNet tensor, stored as each candidate type, changes the UNet's noise prediction.

The allocator (quant/mix/knapsack.py) needs damage[tensor, type] for every quantizable tensor and
candidate type. Two estimates:

- `measured`: quantize only that tensor (as the writer would: same codec, same importance),
  run the UNet on the calibration inputs and take the mean squared change of its output.
  One forward pass per (tensor, type);
- `proxy`: the importance-weighted weight error e = Σ E[x_c²]·ΔW² (the expected squared error of
  the layer's own output) times a gain per tensor g = measured / e at one reference type (the
  cheapest candidate, whose damage is largest and so best above the noise). One forward pass per
  tensor; it assumes a tensor's damage grows in proportion to its layer's output error, which
  `validate_proxy` checks against `measured` (rank correlation).

Damages are added over tensors (each is measured alone): the usual first-order assumption
behind per-layer bit allocation (HAWQ, BitsFusion, Apple's mixed-bit palettization).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from squeezegen.errors import UserError
from squeezegen.quant.codecs.registry import codec
from squeezegen.quant.mix.importance import expand_importance, unet_output
from squeezegen.quant.mix.policy import QuantPolicy, TensorPlan, choose_type, fits, is_kept

SENSITIVITY_MODES = ("measured", "proxy")


@dataclass
class TensorChoices:
    """One allocatable tensor: its candidate types with their bytes and estimated damage."""

    name: str
    shape: tuple[int, ...]
    types: list[str]
    nbytes: dict[str, int]
    weighted_error: dict[str, float] = field(default_factory=dict)
    damage: dict[str, float] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return math.prod(self.shape)


def split_tensors(state: Mapping[str, torch.Tensor], policy: QuantPolicy, types: Sequence[str]
                  ) -> tuple[dict[str, TensorChoices], dict[str, TensorPlan]]:
    """(allocatable tensors with the candidate types they can take, fixed plans of the rest).

    Fixed: what the policy keeps unquantized (embeddings, norms, biases, small tensors), and any
    tensor no candidate type fits (it gets the policy's own plan, e.g. the Q8_0/F16 fallback).
    """
    choices: dict[str, TensorChoices] = {}
    fixed: dict[str, TensorPlan] = {}
    for name, tensor in state.items():
        shape = tuple(tensor.shape)
        ok = [t for t in types if fits(shape, t, policy)] if not is_kept(name, shape, policy) else []
        if ok:
            choices[name] = TensorChoices(name, shape, ok, {t: codec(t).nbytes(math.prod(shape)) for t in ok})
        else:
            fixed[name] = choose_type(name, shape, policy)
    return choices, fixed


def encode_choice(x: np.ndarray, qtype: str, policy: QuantPolicy, name: str) -> np.ndarray:
    """The bytes the writer stores for `x` as `qtype` (same stored layout, same importance)."""
    plan = choose_type(name, x.shape, QuantPolicy(**{**_policy_fields(policy), "tensor_types": {name: qtype}}))
    rows = x.reshape(plan.stored_shape)
    weights = None
    if name in policy.importance:
        weights = expand_importance(policy.importance[name], plan.shape, plan.stored_shape)
    return codec(qtype).quantize(rows, name=name, importance=weights)


def _policy_fields(policy: QuantPolicy) -> dict:
    return {k: getattr(policy, k) for k in ("unet_type", "fallback_type", "keep_type", "keep_patterns",
                                            "min_elements", "reshape_convs")}


def _weighted_error(diff: np.ndarray, per_channel: np.ndarray | None) -> float:
    """Σ E[x_c²]·ΔW² over the weight (ΔW in its true shape [out, in, *kernel])."""
    sq = diff.astype(np.float64) ** 2
    if per_channel is None:
        return float(sq.sum())
    per_input = sq.sum(axis=(0, *range(2, sq.ndim)))  # [in]: summed over outputs and kernel taps
    return float(per_input @ np.asarray(per_channel, dtype=np.float64))


@torch.no_grad()
def _damage(unet: nn.Module, name: str, weight: torch.Tensor, inputs, reference: torch.Tensor) -> float:
    """Mean squared change of the UNet output with only `name` replaced by `weight`."""
    param = unet.get_parameter(name)
    saved = param.data.clone()
    param.data.copy_(weight.to(param.device, param.dtype))
    try:
        return float(((unet_output(unet, inputs) - reference) ** 2).mean())
    finally:
        param.data.copy_(saved)


def estimate_damage(unet: nn.Module, inputs: Mapping[str, torch.Tensor], choices: dict[str, TensorChoices],
                    policy: QuantPolicy, *, mode: str, importance: Mapping[str, np.ndarray] | None = None,
                    cache: dict[tuple[str, str], np.ndarray] | None = None, progress: bool = True) -> None:
    """Fill `choices[*].damage` (and `.weighted_error`, `.measured`) for `unet` on `inputs`.

    importance: E[x²] per input channel for the proxy's weighted error (uniform if missing).
    cache: filled with {(name, type): bytes} so the writer need not quantize again.
    """
    if mode not in SENSITIVITY_MODES:
        raise UserError(f"quantize.sensitivity must be one of {', '.join(SENSITIVITY_MODES)}; got {mode!r}")
    importance = importance or {}
    reference = unet_output(unet, inputs)
    total = sum(len(c.types) for c in choices.values())
    with tqdm(total=total, desc=f"sensitivity ({mode})", disable=not progress) as bar:
        for name, choice in choices.items():
            x = unet.get_parameter(name).detach().float().cpu().numpy()
            ref_type = min(choice.types, key=lambda t: choice.nbytes[t])  # cheapest: the largest damage
            for qtype in choice.types:
                packed = encode_choice(x, qtype, policy, name)
                if cache is not None:
                    cache[(name, qtype)] = packed
                decoded = codec(qtype).dequantize(packed).reshape(x.shape)
                choice.weighted_error[qtype] = _weighted_error(decoded - x, importance.get(name))
                if mode == "measured" or qtype == ref_type:
                    choice.measured[qtype] = _damage(unet, name, torch.from_numpy(decoded), inputs, reference)
                bar.update(1)
            if mode == "measured":
                choice.damage = dict(choice.measured)
            else:
                e_ref = choice.weighted_error[ref_type]
                gain = choice.measured[ref_type] / e_ref if e_ref > 0 else 0.0
                choice.damage = {t: gain * e for t, e in choice.weighted_error.items()}


def _ranks(v: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(v)


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (None for fewer than 3 pairs or a constant side)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def validate_proxy(choices: dict[str, TensorChoices]) -> dict:
    """Rank correlation of the proxies with the measured damage (needs mode="measured").

    `calibrated` is the proxy the allocator uses (gain fitted at each tensor's cheapest type,
    so those pairs are left out); `weighted_error` is the uncalibrated Σ E[x²]·ΔW². `all` ranks
    every (tensor, type) pair, `across_tensors[type]` ranks the tensors at one type (the harder
    question: which tensors matter, not which type is coarser).
    """
    rows = []  # (name, type, measured, weighted_error, calibrated)
    for c in choices.values():
        ref = min(c.types, key=lambda t: c.nbytes[t])
        e_ref = c.weighted_error[ref]
        gain = c.measured[ref] / e_ref if e_ref > 0 else 0.0
        for t in c.types:
            rows.append((c.name, t, c.measured[t], c.weighted_error[t], gain * c.weighted_error[t], t == ref))
    out = {"pairs": len(rows)}
    others = [r for r in rows if not r[5]]
    out["calibrated_all"] = spearman([r[2] for r in others], [r[4] for r in others])
    out["weighted_error_all"] = spearman([r[2] for r in rows], [r[3] for r in rows])
    out["weighted_error_across_tensors"] = {}
    out["calibrated_across_tensors"] = {}
    for t in sorted({r[1] for r in rows}):
        at = [r for r in rows if r[1] == t]
        out["weighted_error_across_tensors"][t] = spearman([r[2] for r in at], [r[3] for r in at])
        at = [r for r in others if r[1] == t]
        out["calibrated_across_tensors"][t] = spearman([r[2] for r in at], [r[4] for r in at])
    return out
