"""The refiner: a small UNet that takes the frozen RQ-VAE reconstruction and predicts the
residual detail to add back (output = recon + UNet(recon)).

It is diffusers' `UNet2DModel` with 3 input and 3 output channels and plain (attention-free)
conv blocks; it is not a diffusion model, so its time input is always 0. The output conv starts
at zero, so an untrained refiner is the identity and training can only move away from the
unrefined reconstruction where that lowers the loss.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DModel
from torch import nn

from squeezegen.errors import UserError
from squeezegen.files import atomic_path
from squeezegen.model_folder import check_model_files
from squeezegen.rq.model import group_count


class Refiner(nn.Module):
    """recon (B, 3, H, W) in [-1, 1] → recon + predicted residual (unclamped)."""

    def __init__(self, *, unet: UNet2DModel):
        super().__init__()
        self.unet = unet

    @classmethod
    def build(cls, *, channels: tuple[int, ...] | list[int], image_size: int, layers_per_block: int = 1) -> "Refiner":
        """A fresh refiner whose UNet has `block_out_channels=channels` (zero-initialised output)."""
        channels = tuple(int(c) for c in channels)
        groups = min(group_count(c) for c in channels)
        unet = UNet2DModel(
            sample_size=image_size,
            in_channels=3,
            out_channels=3,
            block_out_channels=channels,
            layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) * len(channels),
            up_block_types=("UpBlock2D",) * len(channels),
            norm_num_groups=groups,
            add_attention=False,  # detail restoration is local: no self-attention in the mid block
        )
        nn.init.zeros_(unet.conv_out.weight)  # start as the identity map: recon + 0
        nn.init.zeros_(unet.conv_out.bias)
        return cls(unet=unet)

    def forward(self, recon: torch.Tensor) -> torch.Tensor:
        timestep = torch.zeros(recon.shape[0], device=recon.device, dtype=torch.long)  # (B,) unused conditioning
        residual = self.unet(recon, timestep).sample  # (B, 3, H, W)
        return recon + residual


def save_refiner(model: Refiner, out_dir: str | Path) -> Path:
    """Write `out_dir/` (diffusers layout: config.json + diffusion_pytorch_model.safetensors), atomically."""
    with atomic_path(out_dir) as tmp:
        model.unet.save_pretrained(tmp, safe_serialization=True)
    return Path(out_dir)


def load_refiner(model_dir: str | Path, device: torch.device | str = "cpu") -> Refiner:
    """The refiner saved by `save_refiner`, in eval mode on `device`."""
    model_dir = check_model_files(model_dir, what="trained refiner", stage="train_refiner",
                                  required=("config.json", "diffusion_pytorch_model.safetensors"))
    try:
        unet = UNet2DModel.from_pretrained(model_dir, use_safetensors=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise UserError(f"{model_dir}: could not load the refiner ({exc}); re-run the train_refiner stage") from None
    return Refiner(unet=unet).to(device).eval()
