"""Mixed K-quant files: the budget allocation end to end, its baselines, and their drift.

`estimate_mix` takes the fused UNet, the calibration (quant/mix/importance.py) and the policy and
estimates damage per (tensor, candidate type) (quant/mix/sensitivity.py); `Mix.allocate` picks the
types under the byte budget (quant/mix/knapsack.py) and `mixed_policy` sets them as `tensor_types`.

Baselines at matched bytes: uniform types are the policy's own plans; the rule mix is
llama.cpp's Q3_K_M shape (`llama_tensor_get_type`) transposed to a UNet: a base type, with the
attention value projections (`to_v`, llama's attn_v), the feed-forward output (`ff.net.2`,
llama's ffn_down) and every tensor of the first and last resolution blocks (llama's first/last
layers) promoted to a larger type. `weights_for` decodes an assignment into UNet weights, so
drift is measured on what the file would hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from squeezegen.quant.codecs.registry import codec
from squeezegen.quant.mix.importance import Calibration, unet_output
from squeezegen.quant.mix.knapsack import allocate
from squeezegen.quant.mix.policy import QuantPolicy, TensorPlan, choose_type
from squeezegen.quant.mix.sensitivity import (
    TensorChoices,
    encode_choice,
    estimate_damage,
    split_tensors,
    validate_proxy,
)

RULE_MIX = {"base": "Q3_K", "promote": "Q5_K"}  # llama.cpp's Q3_K_M: Q3_K, attn_v/ffn_down → Q4_K/Q5_K
RULE_PATTERNS = (r"\.to_v\.weight$", r"\.ff\.net\.2\.weight$", r"^down_blocks\.0\.")


@dataclass
class Mix:
    """An allocation's inputs and result."""

    choices: dict[str, TensorChoices]
    fixed: dict[str, TensorPlan]
    cache: dict[tuple[str, str], np.ndarray]
    validation: dict | None = None

    @property
    def fixed_bytes(self) -> int:
        return sum(p.nbytes for p in self.fixed.values())

    @property
    def n_params(self) -> int:
        return sum(c.n_params for c in self.choices.values()) + sum(p.n_params for p in self.fixed.values())

    def tensor_bytes(self, types: Mapping[str, str]) -> int:
        """Bytes of all UNet tensor data when the allocatable tensors take `types`."""
        return self.fixed_bytes + sum(self.choices[n].nbytes[t] for n, t in types.items())

    def damage(self, types: Mapping[str, str]) -> float:
        """Estimated total damage (sum over tensors) of an assignment."""
        return sum(self.choices[n].damage[t] for n, t in types.items())

    def allocate(self, budget_bytes: int | None) -> dict[str, str]:
        return allocate(self.choices, budget_bytes, fixed_bytes=self.fixed_bytes)


def estimate_mix(unet: nn.Module, calib: Calibration, policy: QuantPolicy, *, types, mode: str,
                 validate: bool = False, progress: bool = True) -> Mix:
    """Damage per (tensor, candidate type) of `unet` (fp32, the weights to quantize) on `calib`."""
    state = {k: v for k, v in unet.state_dict().items()}
    choices, fixed = split_tensors(state, policy, types)
    cache: dict[tuple[str, str], np.ndarray] = {}
    estimate_damage(unet, calib.inputs, choices, policy, mode=mode, importance=calib.importance, cache=cache,
                    progress=progress)
    return Mix(choices, fixed, cache, validate_proxy(choices) if validate and mode == "measured" else None)


def uniform_types(mix: Mix, qtype: str, policy: QuantPolicy) -> dict[str, str]:
    """Every allocatable tensor as `qtype` where it fits, else what the uniform policy gives it."""
    uni = dataclasses.replace(policy, unet_type=qtype, tensor_types={})
    return {n: qtype if qtype in c.types else choose_type(n, c.shape, uni).qtype.name for n, c in mix.choices.items()}


def rule_types(mix: Mix, *, base: str = RULE_MIX["base"], promote: str = RULE_MIX["promote"],
               last_block: str | None = None, blocks: bool = True) -> dict[str, str]:
    """llama.cpp-style rule mix: `promote` for to_v, ff.net.2 and (with `blocks`) every tensor of
    the first/last resolution blocks, `base` elsewhere; a tensor that cannot take the type gets
    its candidate of the nearest size."""
    names = list(mix.choices)
    if last_block is None:  # the last up block, whatever the UNet's depth
        ups = sorted({int(m.group(1)) for n in names if (m := re.match(r"up_blocks\.(\d+)\.", n))})
        last_block = f"up_blocks.{ups[-1]}." if ups else "conv_out."
    patterns = RULE_PATTERNS[:2] + ((RULE_PATTERNS[2], r"^" + re.escape(last_block)) if blocks else ())
    out = {}
    for n, c in mix.choices.items():
        want = promote if any(re.search(p, n) for p in patterns) else base
        size = codec(want).nbytes(c.n_params)
        out[n] = want if want in c.types else min(c.types, key=lambda t: abs(c.nbytes[t] - size))
    return out


def mixed_policy(policy: QuantPolicy, types: Mapping[str, str]) -> QuantPolicy:
    return dataclasses.replace(policy, tensor_types=dict(types))


def weights_for(unet: nn.Module, mix: Mix, types: Mapping[str, str], policy: QuantPolicy) -> dict[str, torch.Tensor]:
    """{name: decoded weight} of the allocatable tensors under `types` (kept tensors unchanged;
    the fixed quantized ones decoded as the policy stores them)."""
    out = {}
    for name, qtype in types.items():
        x = unet.get_parameter(name).detach().float().cpu().numpy()
        packed = mix.cache.get((name, qtype))
        if packed is None:
            packed = mix.cache.setdefault((name, qtype), encode_choice(x, qtype, policy, name))
        out[name] = torch.from_numpy(codec(qtype).dequantize(packed).reshape(x.shape))
    state = unet.state_dict()
    for name, plan in mix.fixed.items():
        if plan.qtype.name not in ("F16", "F32"):
            x = state[name].detach().float().cpu().numpy()
            packed = mix.cache.get((name, plan.qtype.name))
            if packed is None:
                packed = mix.cache.setdefault((name, plan.qtype.name), encode_choice(x, plan.qtype.name, policy, name))
            out[name] = torch.from_numpy(codec(plan.qtype).dequantize(packed).reshape(x.shape))
    return out


@contextlib.contextmanager
def weights_swapped(unet: nn.Module, weights: Mapping[str, torch.Tensor]) -> Iterator[nn.Module]:
    """`unet` with the tensors named in `weights` replaced by them, restored on exit."""
    state = unet.state_dict()
    saved = {}
    for name, w in weights.items():
        saved[name] = state[name].detach().clone()
        state[name].data.copy_(w.to(state[name].device, state[name].dtype))
    try:
        yield unet
    finally:
        for name, w in saved.items():
            state[name].data.copy_(w)


def output_drift(unet: nn.Module, weights: Mapping[str, torch.Tensor], inputs, reference: torch.Tensor) -> float:
    """Relative RMSE ‖f_q − f‖ / ‖f‖ of the noise prediction on `inputs`."""
    with weights_swapped(unet, weights):
        out = unet_output(unet, inputs)
    return float((out - reference).norm() / reference.norm())


def summary(mix: Mix, types: Mapping[str, str]) -> dict[str, Any]:
    """Bytes, bits per weight, estimated damage and parameter share per type of an assignment."""
    nbytes = mix.tensor_bytes(types)
    params: dict[str, int] = {}
    for n, t in types.items():
        params[t] = params.get(t, 0) + mix.choices[n].n_params
    for p in mix.fixed.values():
        params[p.qtype.name] = params.get(p.qtype.name, 0) + p.n_params
    total = mix.n_params
    return {"tensor_bytes": nbytes, "bpw": 8 * nbytes / total, "est_damage": mix.damage(types),
            "param_share": {t: params[t] / total for t in sorted(params)}}


def unet_part(name: str) -> str:
    """down / mid / up (with the block index) of a UNet tensor, for diffusers or LDM names."""
    name = name.removeprefix("model.diffusion_model.")
    if m := re.match(r"(down_blocks|input_blocks)\.(\d+)\.", name):
        return f"down{m.group(2)}"
    if m := re.match(r"(up_blocks|output_blocks)\.(\d+)\.", name):
        return f"up{m.group(2)}"
    if name.startswith(("mid_block.", "middle_block.")):
        return "mid"
    return name.split(".")[0]


def _position(part: str) -> tuple[int, int]:
    """Sort key along the UNet: inputs, down blocks, mid, up blocks, outputs."""
    if m := re.fullmatch(r"(down|up)(\d+)", part):
        return (1 if m.group(1) == "down" else 3, int(m.group(2)))
    if part == "mid":
        return (2, 0)
    return (4, 0) if part.startswith(("out", "conv_norm_out", "conv_out")) else (0, 0)


def bits_picture(panels: Mapping[str, list[tuple[str, float]]], path, *, title: str = "") -> None:
    """Bits per weight of each tensor along the UNet (down → mid → up), one panel
    per assignment; `panels[label]` = [(tensor name, bits per weight)]. Blocks shaded, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_max = max(len(rows) for rows in panels.values())
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8.0, n_max * 0.05), 2.4 * len(panels)), squeeze=False)
    for ax, (label, rows) in zip(axes[:, 0], panels.items()):
        rows = sorted(rows, key=lambda r: _position(unet_part(r[0])))  # stable: file order within a block
        parts = [unet_part(n) for n, _ in rows]
        bits = [b for _, b in rows]
        top = max(bits + [8.5]) + 1.5
        ax.bar(range(len(rows)), bits, width=1.0, color="tab:blue")
        start, shade = 0, False
        for i in range(1, len(rows) + 1):
            if i == len(rows) or parts[i] != parts[start]:
                if shade:
                    ax.axvspan(start - 0.5, i - 0.5, color="0.9", zorder=0)
                ax.text((start + i - 1) / 2, top - 1.0, parts[start], ha="center", fontsize=7)
                start, shade = i, not shade
        ax.set_title(label, fontsize=9)
        ax.set_ylim(0, top)
        ax.set_xlim(-0.5, len(rows) - 0.5)
        ax.set_ylabel("bits / weight")
    axes[-1, 0].set_xlabel("UNet tensor (inputs, down → mid → up, outputs)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
