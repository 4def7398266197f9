"""Activation importance for the UNet's weights (llama.cpp's imatrix idea) and the calibration set.

For a Linear y = W x, the output error of a quantized row is Σ_c (ΔW_c)·x_c; over many inputs its
mean square is ≈ Σ_c ΔW_c² · E[x_c²] when channels are uncorrelated. So E[x_c²] (mean of x² per
input channel) is the weight every least-squares search should give column c. For a Conv2d the
same holds per input channel, averaged over batch and pixels (each kernel tap sees the same
channel's pixels, shifted).

`calibrate` runs the fine-tuned pipeline on calibration prompts and records, with forward hooks,
E[x²] per input channel of every Linear/Conv2d, and the UNet's inputs at each sampler step
(the "prompts × timesteps" set the sensitivity measurements reuse).

`expand_importance` maps a per-channel vector to the layout of the weight as stored: the writer
reshapes a 3×3 conv [out, in, 3, 3] into rows of 256 in C order, so a row mixes several input
channels (and output channels); broadcasting over the true shape first and reshaping the same
way puts each channel's weight under each of its weights, wherever the row boundaries fall.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from squeezegen.errors import UserError

IMPORTANCE_MODES = ("none", "activations")
# a channel never seen non-zero still gets this share of the mean weight: an all-zero weight
# vector would leave a sub-block's least-squares fit undetermined
IMPORTANCE_FLOOR = 1e-4


class ActivationStats:
    """Σx² and counts per input channel of each Linear/Conv2d of a module, via forward pre-hooks."""

    def __init__(self, model: nn.Module) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self._handles = [
            module.register_forward_pre_hook(self._hook(name))
            for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d))
        ]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().float()
            if isinstance(module, nn.Conv2d):  # [B, C, H, W] → per channel over batch and pixels
                sq, n = (x * x).sum(dim=(0, 2, 3)), x.shape[0] * x.shape[2] * x.shape[3]
            else:  # [..., in] → per feature over every leading position
                sq, n = (x * x).reshape(-1, x.shape[-1]).sum(dim=0), math.prod(x.shape[:-1])
            key = f"{name}.weight"
            self.sums[key] = self.sums[key] + sq.double() if key in self.sums else sq.double()
            self.counts[key] = self.counts.get(key, 0) + n

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def mean_squares(self) -> dict[str, np.ndarray]:
        """{weight name: E[x²] per input channel (float32)} for every layer that ran."""
        return {k: (s / self.counts[k]).float().cpu().numpy() for k, s in self.sums.items()}


@contextlib.contextmanager
def activation_stats(model: nn.Module) -> Iterator[ActivationStats]:
    stats = ActivationStats(model)
    try:
        yield stats
    finally:
        stats.remove()


def expand_importance(per_channel: np.ndarray, shape: Sequence[int], stored_shape: Sequence[int]) -> np.ndarray:
    """E[x²] per input channel → float32 weights in the layout of the stored tensor.

    shape: the weight's true shape [out, in, *kernel]; stored_shape: as written (the same, or
    rows of one block). Normalized to mean 1 with a floor (IMPORTANCE_FLOOR), so dead channels
    still count a little. Raises UserError when the vector does not match the input channels.
    """
    shape, stored_shape = tuple(shape), tuple(stored_shape)
    v = np.asarray(per_channel, dtype=np.float64)
    if len(shape) < 2 or v.shape != (shape[1],):
        raise UserError(f"importance vector of shape {v.shape} does not match the input channels of a weight "
                        f"of shape {shape}; re-run the calibration with the same UNet.")
    mean = v.mean()
    v = v / mean if mean > 0 else np.ones_like(v)
    v = np.maximum(v, IMPORTANCE_FLOOR).astype(np.float32)
    full = np.broadcast_to(v.reshape(1, -1, *([1] * (len(shape) - 2))), shape)  # [out, in, *kernel]
    return np.ascontiguousarray(full).reshape(stored_shape)  # same C-order reshape as the weight


@dataclass
class Calibration:
    """What one calibration run produced.

    inputs: the UNet's inputs at every sampler step, batched: sample [N, 4, h, w], timestep [N],
    encoder_hidden_states [N, T, D] (N = prompts × 2 (classifier-free guidance) × steps).
    importance: {diffusers weight name: E[x²] per input channel}.
    """

    inputs: dict[str, torch.Tensor]
    importance: dict[str, np.ndarray]

    @property
    def n_samples(self) -> int:
        return int(self.inputs["sample"].shape[0])

    def subset(self, n: int) -> "Calibration":
        """`n` of the recorded UNet inputs, evenly spread over prompts, guidance halves and steps
        (the damage measurements run one forward pass per candidate, so they use fewer)."""
        if n >= self.n_samples:
            return self
        idx = torch.linspace(0, self.n_samples - 1, n).round().long()
        return Calibration({k: v[idx] for k, v in self.inputs.items()}, self.importance)


def calibrate(pipe: Any, prompts: Sequence[str], *, steps: int, size: int, seed: int,
              guidance_scale: float) -> Calibration:
    """Run `pipe` (a StableDiffusionPipeline, weights as they will be quantized) on `prompts` for
    `steps` sampler steps at `size` px; record activation statistics and the UNet's inputs."""
    if not prompts or steps < 1:
        raise UserError("calibration needs at least one prompt and one sampler step (quantize.calib_prompts, "
                        "quantize.calib_steps).")
    unet = pipe.unet
    captured: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        states = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        captured.append((sample.detach().cpu(), timestep.detach().cpu(), states.detach().cpu()))

    handle = unet.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with activation_stats(unet) as stats, torch.no_grad():
            generator = torch.Generator("cpu").manual_seed(seed)
            pipe.set_progress_bar_config(disable=True)
            pipe(list(prompts), height=size, width=size, num_inference_steps=steps, guidance_scale=guidance_scale,
                 generator=generator, output_type="latent")
    finally:
        handle.remove()
    samples, timesteps, states = zip(*captured)
    inputs = {"sample": torch.cat(samples), "timestep": torch.cat(timesteps),
              "encoder_hidden_states": torch.cat(states)}
    return Calibration(inputs=inputs, importance=stats.mean_squares())


def unet_output(unet: nn.Module, inputs: dict[str, torch.Tensor], *, batch: int = 16) -> torch.Tensor:
    """The UNet's noise prediction on the calibration inputs, in float32 on the CPU."""
    param = next(unet.parameters())
    outs = []
    with torch.no_grad():
        for start in range(0, inputs["sample"].shape[0], batch):
            part = {k: v[start:start + batch].to(param.device, param.dtype if v.is_floating_point() else v.dtype)
                    for k, v in inputs.items()}
            outs.append(unet(part["sample"], part["timestep"], part["encoder_hidden_states"]).sample.float().cpu())
    return torch.cat(outs)
