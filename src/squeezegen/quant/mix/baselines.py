"""The measured allocation against fixed-rule mixes at matched bytes, on held-out inputs.

For each baseline assignment (uniform Q4_K, uniform Q3_K, llama.cpp's Q3_K_M-shaped rule mix,
ComfyUI-GGUF's Q4_K_M rule), the allocation (quant/mix/knapsack.py) is run with that baseline's own
byte count as its budget, so each pair holds the same bytes (the allocation at most as many).
Both are then decoded (same codecs, same importance as the writer) and compared with the
unquantized UNet on calibration inputs *held out* from the ones the sensitivities were measured
on (other prompts, another seed): the relative RMSE of the noise prediction (and its SNR in dB),
and, when a renderer is given, the PSNR of the final images at the same seed.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from squeezegen.quant.mix.assign import (
    Mix,
    output_drift,
    rule_types,
    summary,
    uniform_types,
    weights_for,
    weights_swapped,
)
from squeezegen.quant.mix.importance import unet_output
from squeezegen.quant.mix.policy import QuantPolicy

Assignment = dict[str, str]


def baseline_assignments(mix: Mix, policy: QuantPolicy) -> dict[str, Assignment]:
    """{label: types} of the fixed-rule baselines, largest first."""
    return {
        "uniform_Q4_K": uniform_types(mix, "Q4_K", policy),
        # ComfyUI-GGUF's Q4_K_M patch: to_v and ff.net.2 → Q6_K, nothing per block
        "rule_Q4_K_M": rule_types(mix, base="Q4_K", promote="Q6_K", blocks=False),
        # llama.cpp's Q3_K_M shape: to_v, ff.net.2 and the first/last blocks → Q5_K
        "rule_Q3_K_M": rule_types(mix, base="Q3_K", promote="Q5_K"),
        "uniform_Q3_K": uniform_types(mix, "Q3_K", policy),
    }


def snr_db(rel_rmse: float) -> float:
    """‖f‖² / ‖f_q − f‖² in dB (inf for no error)."""
    return math.inf if rel_rmse == 0 else -20 * math.log10(rel_rmse)


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of images in [0, 1]."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def pipeline_renderer(pipe: Any, prompts, *, steps: int, size: int, seed: int,
                      guidance_scale: float) -> Callable[[Mapping[str, torch.Tensor]], float]:
    """A function: decoded UNet weights → PSNR (dB) of `pipe`'s images with them vs with the
    pipeline's own weights, same prompts and seed."""

    def render() -> np.ndarray:
        generator = torch.Generator("cpu").manual_seed(seed)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            return pipe(list(prompts), height=size, width=size, num_inference_steps=steps,
                        guidance_scale=guidance_scale, generator=generator, output_type="np").images

    reference = render()

    def image_psnr(weights: Mapping[str, torch.Tensor]) -> float:
        with weights_swapped(pipe.unet, weights):
            return psnr_db(render(), reference)

    return image_psnr


def measure(unet: nn.Module, mix: Mix, types: Assignment, policy: QuantPolicy, heldout: Mapping[str, torch.Tensor],
            reference: torch.Tensor, image_psnr: Callable | None = None) -> dict[str, Any]:
    """Bytes, bits per weight, estimated damage and held-out drift of one assignment."""
    weights = weights_for(unet, mix, types, policy)
    rel = output_drift(unet, weights, heldout, reference)
    row = summary(mix, types) | {"noise_rel_rmse": rel, "noise_snr_db": snr_db(rel)}
    if image_psnr is not None:
        row["image_psnr_db"] = image_psnr(weights)
    return row


def compare_at_matched_bytes(unet: nn.Module, mix: Mix, policy: QuantPolicy, heldout: Mapping[str, torch.Tensor], *,
                             image_psnr: Callable | None = None, labels=None,
                             extra: Mapping[str, Assignment] | None = None) -> dict[str, Any]:
    """For each baseline: the baseline, the allocation at the baseline's bytes, and whether the
    allocation's held-out noise drift is lower. `labels` picks baselines (default: all);
    `extra` assignments (e.g. the allocation under the configured budget) are measured alone."""
    reference = unet_output(unet, heldout)
    out: dict[str, Any] = {"heldout_samples": int(heldout["sample"].shape[0])}
    for label, types in (extra or {}).items():
        out[label] = measure(unet, mix, types, policy, heldout, reference, image_psnr)
    for label, types in baseline_assignments(mix, policy).items():
        if labels is not None and label not in labels:
            continue
        budget = mix.tensor_bytes(types)
        alloc = mix.allocate(budget)
        base_row = measure(unet, mix, types, policy, heldout, reference, image_psnr)
        alloc_row = measure(unet, mix, alloc, policy, heldout, reference, image_psnr)
        out[label] = {
            "budget_bytes": budget,
            "baseline": base_row,
            "allocation": alloc_row,
            "allocation_lower_noise_drift": alloc_row["noise_rel_rmse"] < base_row["noise_rel_rmse"],
        }
        if image_psnr is not None:
            out[label]["allocation_higher_image_psnr"] = alloc_row["image_psnr_db"] > base_row["image_psnr_db"]
    return out


def heldout_prompt_indices(n: int) -> list[int]:
    """Indices into `sample_prompts(2 n)` that are not the calibration prompts' styles: the odd ones
    (`sample_prompts(n)` spreads n styles; 2n spreads twice as many, the even ones near the first n)."""
    return list(range(1, 2 * n, 2))


def compare_on_heldout(pipe: Any, mix: Mix, policy: QuantPolicy, prompts, *, steps: int, size: int, seed: int,
                       guidance_scale: float, images: bool = True, **kwargs) -> dict[str, Any]:
    """`compare_at_matched_bytes` on the UNet inputs of `pipe` run on `prompts` at `seed` (pass
    prompts and a seed the sensitivities did not see), with the images' PSNR if `images`."""
    from squeezegen.quant.mix.importance import calibrate

    heldout = calibrate(pipe, prompts, steps=steps, size=size, seed=seed, guidance_scale=guidance_scale)
    render = pipeline_renderer(pipe, prompts, steps=steps, size=size, seed=seed,
                               guidance_scale=guidance_scale) if images else None
    return compare_at_matched_bytes(pipe.unet, mix, policy, heldout.inputs, image_psnr=render, **kwargs)
