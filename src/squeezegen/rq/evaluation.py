"""Evaluating the RQ branch on held-out images, and `reconstruct_image` for the CLI.

Metrics follow `squeezegen.image_metrics` (PSNR in dB, SSIM, LPIPS or its random-backbone stand-in
`lpips_randnet`), averaged over images; reconstructions are clamped to [-1, 1] first.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image, ImageOps

from squeezegen.data.tensors import pil_to_uint8, to_signed, to_uint8
from squeezegen.errors import UserError
from squeezegen.image_metrics import lpips_distance, psnr, ssim
from squeezegen.rq.model import RQVAE, load_rqvae

if TYPE_CHECKING:  # diffusers is slow to import; only the refiner paths need it
    from squeezegen.rq.refiner import Refiner


def codebook_stats(levels: list[torch.Tensor], codebook_size: int) -> tuple[list[float], list[float]]:
    """Per level: the fraction of the K codes used, and the perplexity exp(H) of the code histogram.

    levels: each level's codes (B, n_k) (`RQVAE.split_levels`), with no dropped (−1) entries.
    Perplexity is K when all codes are used equally often and 1 when one code is used everywhere.
    """
    usage, perplexity = [], []
    for level in levels:  # (B, n_k) each
        counts = torch.bincount(level.flatten(), minlength=codebook_size).double()  # (K,)
        p = counts / counts.sum()
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        usage.append(float((counts > 0).double().mean()))
        perplexity.append(float(entropy.exp()))
    return usage, perplexity


def _per_image(metric_sums: dict[str, float], count: int) -> dict[str, float]:
    return {k: v / count for k, v in metric_sums.items()}


@torch.no_grad()
def evaluate_rqvae(
    model: RQVAE,
    images: torch.Tensor,
    *,
    lpips_net: torch.nn.Module,
    lpips_name: str,
    batch_size: int,
    device: torch.device | str,
) -> dict[str, Any]:
    """Val metrics of an RQ-VAE on uint8 images (N, 3, H, W).

    Returns psnr, ssim, <lpips_name> (all levels), psnr_by_levels / ssim_by_levels (decoding
    with the first k levels, k = 1..L), psnr_latent (the decoder on the unquantized encoder
    latent: the ceiling that adding levels approaches; if psnr_by_levels[-1] is already near it,
    more levels cannot help and the autoencoder is the limit), codebook_usage and perplexity (one
    entry per level), grid (h, w), scales (each level's grid side), codes_per_image (h·w·L, or
    Σ s_k² for a pyramid), bits_per_image = codes_per_image·log2 K, and n_images.
    """
    model.eval()
    levels = model.levels
    sums = {"psnr": 0.0, "ssim": 0.0, lpips_name: 0.0, "psnr_latent": 0.0}
    psnr_levels, ssim_levels = [0.0] * levels, [0.0] * levels
    all_indices = []
    grid = (0, 0)
    for start in range(0, len(images), batch_size):
        x = to_signed(images[start : start + batch_size].to(device))  # (b, 3, H, W)
        quantized, indices, _ = model.quantize(x)  # (b, D, h, w), (b, h·w, L) or (b, Σ s_k²)
        grid = tuple(quantized.shape[-2:])
        all_indices.append(indices.cpu())
        recon = model.decoder(quantized).clamp(-1, 1)  # (b, 3, H, W)
        sums["psnr"] += float(psnr(recon, x).sum())
        sums["ssim"] += float(ssim(recon, x).sum())
        sums[lpips_name] += float(lpips_distance(lpips_net, recon, x).sum())
        sums["psnr_latent"] += float(psnr(model.decoder(model.encoder(x)).clamp(-1, 1), x).sum())
        for k in range(1, levels + 1):
            coarse = model.decode_indices(indices, levels=k, grid_hw=grid).clamp(-1, 1)
            psnr_levels[k - 1] += float(psnr(coarse, x).sum())
            ssim_levels[k - 1] += float(ssim(coarse, x).sum())
    n = len(images)
    usage, perplexity = codebook_stats(model.split_levels(torch.cat(all_indices)), model.codebook_size)
    codes = model.codes_per_image(grid[0])
    return {
        **_per_image(sums, n),
        "psnr_by_levels": [v / n for v in psnr_levels],
        "ssim_by_levels": [v / n for v in ssim_levels],
        "codebook_usage": usage,
        "perplexity": perplexity,
        "grid": list(grid),
        "scales": model.level_sides(grid[0]),
        "codes_per_image": codes,
        "bits_per_image": codes * math.log2(model.codebook_size),
        "n_images": n,
    }


@torch.no_grad()
def evaluate_refiner(
    rqvae: RQVAE,
    refiner: Refiner,
    images: torch.Tensor,
    *,
    lpips_net: torch.nn.Module,
    lpips_name: str,
    batch_size: int,
    device: torch.device | str,
) -> dict[str, float]:
    """psnr / ssim / l1 / <lpips_name>, each `_before` (RQ-VAE, all levels) and `_after` (refined)."""
    rqvae.eval()
    refiner.eval()
    sums: dict[str, float] = {}
    for start in range(0, len(images), batch_size):
        x = to_signed(images[start : start + batch_size].to(device))  # (b, 3, H, W)
        recon = rqvae(x)[0].clamp(-1, 1)
        refined = refiner(recon).clamp(-1, 1)
        for when, y in (("before", recon), ("after", refined)):
            for name, values in (
                ("psnr", psnr(y, x)),
                ("ssim", ssim(y, x)),
                ("l1", (y - x).abs().flatten(1).mean(dim=1)),
                (lpips_name, lpips_distance(lpips_net, y, x)),
            ):
                key = f"{name}_{when}"
                sums[key] = sums.get(key, 0.0) + float(values.sum())
    return _per_image(sums, len(images))


@torch.no_grad()
def progressive_rows(
    rqvae: RQVAE, images: torch.Tensor, *, refiner: Refiner | None = None, device: torch.device | str
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """For uint8 images (n, 3, H, W): uint8 decodes with 1..L levels, and the refined full decode (or None)."""
    x = to_signed(images.to(device))  # (n, 3, H, W)
    _, indices, _ = rqvae.quantize(x)
    grid = (images.shape[-2] // rqvae.downsample, images.shape[-1] // rqvae.downsample)
    by_levels = [to_uint8(rqvae.decode_indices(indices, levels=k, grid_hw=grid)).cpu() for k in range(1, rqvae.levels + 1)]
    refined = None
    if refiner is not None:
        full = rqvae.decode_indices(indices, grid_hw=grid).clamp(-1, 1)  # (n, 3, H, W)
        refined = to_uint8(refiner(full)).cpu()
    return by_levels, refined


def reconstruct_image(
    img: Image.Image,
    *,
    rqvae_dir: str | Path,
    levels: int | None = None,
    refiner_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> Image.Image:
    """Encode a PIL image with the trained RQ-VAE and decode it with its first `levels` levels (None: all).

    The image is center-cropped to a square and resized to the RQ-VAE's training size (as
    preprocessing does). With `refiner_dir`, the refiner is applied to the decode. UserError if
    `levels` is outside 1..L or a model folder is missing.
    """
    rqvae = load_rqvae(rqvae_dir, device)
    levels = rqvae.levels if levels is None else levels
    if not 1 <= levels <= rqvae.levels:
        raise UserError(f"--levels must be between 1 and {rqvae.levels} (the levels this RQ-VAE was trained with), got {levels}")
    size = int(rqvae.meta.get("image_size", 0)) or _nearest_multiple(min(img.size), rqvae.downsample)
    square = ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.LANCZOS)
    with torch.no_grad():
        x = to_signed(pil_to_uint8(square)[None].to(device))  # (1, 3, S, S)
        indices = rqvae.encode(x)
        grid = (size // rqvae.downsample,) * 2
        out = rqvae.decode_indices(indices, levels=levels, grid_hw=grid).clamp(-1, 1)
        if refiner_dir is not None:
            from squeezegen.rq.refiner import load_refiner

            out = load_refiner(refiner_dir, device)(out).clamp(-1, 1)
    pixels = to_uint8(out)[0].permute(1, 2, 0).cpu().numpy()  # (S, S, 3)
    return Image.fromarray(pixels)


def _nearest_multiple(value: int, multiple: int) -> int:
    return max(multiple, value // multiple * multiple)
