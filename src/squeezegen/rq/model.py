"""The RQ-VAE: a conv encoder, a residual quantizer on the grid of latents, a conv decoder.

An image (B, 3, H, W) in [-1, 1] becomes a (H/d) × (W/d) grid (d = `downsample`) of code_dim
latents, quantized by L residual levels (level 1 the coarse structure, each next level the
residual the previous ones left). Two layouts of the levels:

- **equal** (`scales=None`, the RQ-VAE paper): every level quantizes every grid cell
  (`vector_quantize_pytorch.ResidualVQ`), giving indices (B, h·w, L);
- **pyramid** (`scales=[s_1, …, s_L]`, VAR's next-scale quantization): level k quantizes the
  residual average-pooled to an s_k × s_k grid, upsampled back and passed through a small conv φ
  before it is subtracted (`vector_quantize_pytorch.HierarchicalVQ`), giving indices (B, Σ s_k²),
  scale by scale, each in raster order.

`to_tokens` / `from_tokens` convert between a layout and flat tokens (B, T) ordered level by
level, the sequence a next-scale prior draws. Decoding with only the first k levels gives a
coarser image: that is the progressive picture.

Two architecture knobs matter at small widths (measured on the toy profile: docs/generator.md):
`norm_groups` — GroupNorm with as many groups as channels is instance norm, which erases each
image's mean colour and contrast, so the decoder cannot reproduce them from any latent; 0 (no
norm) lets it. `padding_mode` — zero padding tells every conv where the border is, and the
decoder learns to draw a frame and corner marks; replicate padding gives it nothing to learn there.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn
from vector_quantize_pytorch import HierarchicalVQ, ResidualVQ

from squeezegen.model_folder import load_model_folder, read_model_config, save_model_folder

FORMAT = "squeezegen.rqvae/1"
PADDING_MODES = ("zeros", "replicate", "reflect")  # nn.Conv2d padding modes the 3×3 convs may use
PHI_MIX = 0.5  # φ(x) = (1 − PHI_MIX)·x + PHI_MIX·conv3x3(x) after upsampling a pyramid level (VAR's quant_resi)


def pyramid_sides(levels: int, side: int, first: int) -> list[int]:
    """Grid sides of a `levels`-level pyramid over a side × side grid: from `first`, doubling, capped at
    `side`; the last level is always the full grid. (4, 16, 4) → [4, 8, 16, 16]; (4, 16, 2) → [2, 4, 8, 16]."""
    sides = [min(side, max(1, first) << k) for k in range(levels)]
    return sides[:-1] + [side]


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (each tensor once, so a shared codebook counts once)."""
    return sum(p.numel() for p in model.parameters())


def group_count(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups: the largest of 32, 16, … (at most `max_groups`) that divides `channels`."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if g <= max(max_groups, 1) and channels % g == 0)


def norm_layer(channels: int, norm_groups: int) -> nn.Module:
    """GroupNorm with up to `norm_groups` groups, or no normalization when `norm_groups` is 0."""
    return nn.GroupNorm(group_count(channels, norm_groups), channels) if norm_groups > 0 else nn.Identity()


def conv3x3(in_channels: int, out_channels: int, *, padding_mode: str, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, padding_mode=padding_mode)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → 3×3 conv, twice, plus a (1×1 if the width changes) skip."""

    def __init__(self, *, in_channels: int, out_channels: int, norm_groups: int = 32, padding_mode: str = "zeros"):
        super().__init__()
        self.body = nn.Sequential(
            norm_layer(in_channels, norm_groups),
            nn.SiLU(),
            conv3x3(in_channels, out_channels, padding_mode=padding_mode),
            norm_layer(out_channels, norm_groups),
            nn.SiLU(),
            conv3x3(out_channels, out_channels, padding_mode=padding_mode),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class Encoder(nn.Module):
    """RGB → (B, code_dim, H/2^n, W/2^n); channels[i] is the width at resolution /2^i."""

    def __init__(self, *, channels: tuple[int, ...], code_dim: int, norm_groups: int = 32, padding_mode: str = "zeros"):
        super().__init__()
        kw = dict(norm_groups=norm_groups, padding_mode=padding_mode)
        layers: list[nn.Module] = [conv3x3(3, channels[0], padding_mode=padding_mode)]
        for width, next_width in zip(channels[:-1], channels[1:]):
            layers += [ResBlock(in_channels=width, out_channels=width, **kw), conv3x3(width, next_width, padding_mode=padding_mode, stride=2)]
        last = channels[-1]
        layers += [
            ResBlock(in_channels=last, out_channels=last, **kw),
            norm_layer(last, norm_groups),
            nn.SiLU(),
            nn.Conv2d(last, code_dim, 1),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, code_dim, h, w) → RGB (B, 3, h·2^n, w·2^n), mirroring the encoder."""

    def __init__(self, *, channels: tuple[int, ...], code_dim: int, norm_groups: int = 32, padding_mode: str = "zeros"):
        super().__init__()
        kw = dict(norm_groups=norm_groups, padding_mode=padding_mode)
        last = channels[-1]
        layers: list[nn.Module] = [nn.Conv2d(code_dim, last, 1), ResBlock(in_channels=last, out_channels=last, **kw)]
        for width, prev_width in zip(reversed(channels[:-1]), reversed(channels[1:])):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                conv3x3(prev_width, width, padding_mode=padding_mode),
                ResBlock(in_channels=width, out_channels=width, **kw),
            ]
        first = channels[0]
        layers += [norm_layer(first, norm_groups), nn.SiLU(), conv3x3(first, 3, padding_mode=padding_mode)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class RQVAE(nn.Module):
    """Residual-quantized VAE. Images in [-1, 1]; outputs are unclamped (clamp for display)."""

    def __init__(
        self,
        *,
        levels: int,
        codebook_size: int,
        code_dim: int,
        downsample: int,
        channels: tuple[int, ...] | list[int],
        shared_codebook: bool = False,
        ema_decay: float = 0.99,
        kmeans_init: bool = True,
        dead_code_threshold: float = 2.0,
        quantize_dropout: bool = False,
        commitment_weight: float = 0.25,
        rotation_trick: bool = False,
        norm_groups: int = 32,
        padding_mode: str = "zeros",
        scales: list[int] | None = None,
    ):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if downsample < 1 or downsample & (downsample - 1):
            raise ValueError(f"downsample must be a power of two, got {downsample}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if norm_groups < 0:
            raise ValueError(f"norm_groups must be >= 0 (0 = no normalization), got {norm_groups}")
        if len(channels) != int(math.log2(downsample)) + 1:
            raise ValueError(f"channels needs log2(downsample)+1 = {int(math.log2(downsample)) + 1} entries, got {channels}")
        if scales is not None:
            scales = [int(s) for s in scales]
            if len(scales) != levels or min(scales) < 1 or scales != sorted(scales):
                raise ValueError(f"scales must list {levels} grid sides ≥ 1, coarse to fine, got {scales}")
        # Everything needed to rebuild the model; saved as config.json next to the weights.
        self.config: dict[str, Any] = dict(
            levels=levels,
            codebook_size=codebook_size,
            code_dim=code_dim,
            downsample=downsample,
            channels=list(channels),
            shared_codebook=shared_codebook,
            ema_decay=ema_decay,
            kmeans_init=kmeans_init,
            dead_code_threshold=dead_code_threshold,
            quantize_dropout=quantize_dropout,
            commitment_weight=commitment_weight,
            rotation_trick=rotation_trick,
            norm_groups=norm_groups,
            padding_mode=padding_mode,
            **({} if scales is None else {"scales": scales}),  # equal levels save the same config as ever
        )
        self.meta: dict[str, Any] = {}  # training facts read back by `load_rqvae` (image size, steps…)
        self.levels = levels
        self.codebook_size = codebook_size
        self.downsample = downsample
        self.encoder = Encoder(channels=channels, code_dim=code_dim, norm_groups=norm_groups, padding_mode=padding_mode)
        self.decoder = Decoder(channels=channels, code_dim=code_dim, norm_groups=norm_groups, padding_mode=padding_mode)
        self.scales = scales  # None: equal levels; else the grid side of each level
        codebooks = dict(
            dim=code_dim,
            codebook_size=codebook_size,
            shared_codebook=shared_codebook,
            kmeans_init=kmeans_init,
            decay=ema_decay,  # EMA codebooks: updated inside forward in training mode
            threshold_ema_dead_code=dead_code_threshold,
            commitment_weight=commitment_weight,
            # Gradients to the encoder: the RQ-VAE paper's straight-through estimator by default
            # (the library defaults to the rotation trick).
            rotation_trick=rotation_trick,
        )
        if scales is None:
            self.quantizer = ResidualVQ(num_quantizers=levels, quantize_dropout=quantize_dropout, **codebooks)
        else:
            self.quantizer = HierarchicalVQ(
                scales=scales, accept_image_fmap=True, quant_resi=PHI_MIX, share_quant_resi=0,  # one φ per level
                nested_dropout=0.5 if quantize_dropout else 0.0, **codebooks,
            )

    @property
    def pyramid(self) -> bool:
        return self.scales is not None

    def level_sides(self, side: int) -> list[int]:
        """The grid side of each level when the full grid is side × side."""
        if not self.pyramid:
            return [side] * self.levels
        if self.scales[-1] != side:
            raise ValueError(f"this RQ-VAE's last level is a {self.scales[-1]}×{self.scales[-1]} grid, the images give {side}×{side}")
        return list(self.scales)

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode and quantize: (quantized latent (B, D, h, w), indices, commitment loss).

        Indices: (B, h·w, L) for equal levels, (B, Σ s_k²) for a pyramid."""
        z = self.encoder(x)  # (B, D, h, w)
        h, w = z.shape[-2:]
        if self.pyramid:
            if (h, w) != (self.scales[-1],) * 2:
                raise ValueError(f"this RQ-VAE quantizes a {self.scales[-1]}² grid; the images give {h}×{w}")
            quantized, per_level, commit = self.quantizer(z)  # (B, D, h, w), L × (B, s, s), scalar
            return quantized, torch.cat([i.flatten(1) for i in per_level], dim=1), commit
        seq = rearrange(z, "b d h w -> b (h w) d")  # (B, N, D)
        quantized, indices, commit = self.quantizer(seq)  # (B, N, D), (B, N, L), (L,)
        return rearrange(quantized, "b (h w) d -> b d h w", h=h, w=w), indices, commit

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """x (B, 3, H, W) → (recon (B, 3, H, W), indices (B, h·w, L), losses).

        losses["commitment"] is the weighted commitment loss summed over levels (a scalar).
        In training mode with quantize_dropout, dropped levels have index −1.
        """
        quantized, indices, commit = self.quantize(x)
        return self.decoder(quantized), indices, {"commitment": commit.sum()}

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Code indices of images (B, 3, H, W): (B, h·w, L) for equal levels, (B, Σ s_k²) for a pyramid."""
        return self.quantize(x)[1]

    def split_levels(self, indices: torch.Tensor) -> list[torch.Tensor]:
        """The codes of each level, (B, n_k) per level, from either layout."""
        if not self.pyramid:
            return list(indices.unbind(dim=-1))
        return list(torch.split(indices, [s * s for s in self.scales], dim=1))

    def codes_per_image(self, side: int) -> int:
        """Codes an image of grid side × side becomes: h·w·L for equal levels, Σ s_k² for a pyramid."""
        return sum(s * s for s in self.level_sides(side))

    def to_tokens(self, indices: torch.Tensor) -> torch.Tensor:
        """Flat tokens (B, T), level by level, each level in raster order."""
        return indices if self.pyramid else rearrange(indices, "b n l -> b (l n)")

    def from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The inverse of `to_tokens`."""
        return tokens if self.pyramid else rearrange(tokens, "b (l n) -> b n l", l=self.levels)

    def _pyramid_latent(self, indices: torch.Tensor, k: int) -> torch.Tensor:
        """Σ over the first k levels of φ_level(upsampled code map): the latent (B, D, s, s)."""
        sides, side = self.scales, self.scales[-1]
        if indices.ndim != 2 or indices.shape[1] != sum(s * s for s in sides):
            raise ValueError(f"indices must be (B, {sum(s * s for s in sides)}) for scales {sides}, got shape {tuple(indices.shape)}")
        latent = None
        for level, part in enumerate(torch.split(indices, [s * s for s in sides], dim=1)[:k]):
            codes = self.quantizer.get_vq(level).get_output_from_indices(part)  # (B, s², D)
            grid = rearrange(codes, "b (h w) d -> b d h w", h=sides[level])
            grid = self.quantizer.upsample_to_full(grid, (side, side), level)  # (B, D, side, side)
            latent = grid if latent is None else latent + grid
        return latent

    def latent_from_indices(self, indices: torch.Tensor, *, levels: int | None = None, grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """The quantized latent (B, D, h, w) rebuilt from the first `levels` levels of `indices`.

        Levels above `levels` are masked (index −1), which `ResidualVQ.get_output_from_indices`
        treats as a zero code, so they cannot influence the result. `grid_hw` defaults to a square grid.
        """
        k = self.levels if levels is None else levels
        if not 1 <= k <= self.levels:
            raise ValueError(f"levels must be in 1..{self.levels}, got {k}")
        if self.pyramid:  # the finer levels' codes are never read
            return self._pyramid_latent(indices, k)
        if indices.shape[-1] != self.levels:
            raise ValueError(f"indices must have {self.levels} levels in the last dimension, got shape {tuple(indices.shape)}")
        n = indices.shape[1]
        h, w = grid_hw or (math.isqrt(n), math.isqrt(n))
        if h * w != n:
            raise ValueError(f"{n} codes do not form a {h}×{w} grid; pass grid_hw")
        kept = indices.clone()
        kept[..., k:] = -1  # (B, N, L): drop the finer levels
        seq = self.quantizer.get_output_from_indices(kept)  # (B, N, D)
        return rearrange(seq, "b (h w) d -> b d h w", h=h, w=w)

    def decode_indices(self, indices: torch.Tensor, *, levels: int | None = None, grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) decoded from the first `levels` (default all) levels of `indices` (either layout)."""
        return self.decoder(self.latent_from_indices(indices, levels=levels, grid_hw=grid_hw))


def save_rqvae(model: RQVAE, out_dir: str | Path, *, meta: dict[str, Any] | None = None) -> Path:
    """Write `out_dir/` = model.safetensors + config.json (constructor arguments + `meta`), atomically.

    `meta` holds facts about the training (image size, steps…) that loaders may read back.
    """
    return save_model_folder(model, out_dir, {"format": FORMAT, "model": model.config, "meta": meta or {}})


def read_rqvae_config(model_dir: str | Path) -> dict[str, Any]:
    """config.json of a saved RQ-VAE; UserError if the folder does not hold one."""
    return read_model_config(model_dir, what="RQ-VAE", fmt=FORMAT, stage="train_rqvae")


def load_rqvae(model_dir: str | Path, device: torch.device | str = "cpu") -> RQVAE:
    """The RQ-VAE saved by `save_rqvae`, in eval mode on `device` (config.json's "meta" is `model.meta`)."""
    return load_model_folder(model_dir, lambda config: RQVAE(**config["model"]), what="RQ-VAE", fmt=FORMAT,
                             stage="train_rqvae", device=device)
