"""Training the RQ branch with the shared loop (`squeezegen.training.train`): image tensors, the
two loss functions and the two training entry points.

Images are held in memory as uint8 tensors (N, 3, H, W) (a quarter of float32's size) and
turned into [-1, 1] floats batch by batch, inside the loss function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from squeezegen.config import RefinerConfig, RQVAEConfig
from squeezegen.data.tensors import to_signed
from squeezegen.image_metrics import lpips_distance
from squeezegen.rq.model import RQVAE, pyramid_sides
from squeezegen.seed import seed_everything
from squeezegen.training import TrainResult, cosine_settings, train

# ------------------------------------------------------------------------------------ losses


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean L1 or L2 (MSE) error between two image batches."""
    if kind == "l1":
        return F.l1_loss(recon, target)
    if kind == "l2":
        return F.mse_loss(recon, target)
    raise ValueError(f"recon_loss must be 'l1' or 'l2', got {kind!r}")


def make_rqvae_loss(*, recon_loss: str, lpips_weight: float = 0.0, lpips_net: torch.nn.Module | None = None) -> Callable:
    """loss_fn(model, batch, step) for the RQ-VAE: recon + commitment (+ lpips_weight · LPIPS)."""
    if lpips_weight > 0 and lpips_net is None:
        raise ValueError("lpips_weight > 0 needs an lpips_net (squeezegen.image_metrics.load_lpips)")

    def loss_fn(model, batch, step):
        (images,) = batch
        x = to_signed(images)  # (B, 3, H, W) in [-1, 1]
        recon, _, losses = model(x)
        rec = reconstruction_loss(recon.float(), x, recon_loss)
        loss = rec + losses["commitment"]
        extras = {"recon": rec.detach(), "commitment": losses["commitment"].detach()}
        if lpips_weight > 0:
            perceptual = lpips_distance(lpips_net, recon.float(), x).mean()
            loss = loss + lpips_weight * perceptual
            extras["lpips"] = perceptual.detach()
        return loss, extras

    return loss_fn


def make_refiner_loss(*, lpips_weight: float, lpips_net: torch.nn.Module | None) -> Callable:
    """loss_fn(model, batch, step) for the refiner: L1 + lpips_weight · LPIPS on (recon, target) pairs."""
    if lpips_weight > 0 and lpips_net is None:
        raise ValueError("lpips_weight > 0 needs an lpips_net (squeezegen.image_metrics.load_lpips)")

    def loss_fn(model, batch, step):
        recon, images = batch  # (B, 3, H, W) float16 recon in [-1, 1], uint8 targets
        x = to_signed(images)
        refined = model(recon.float()).float()
        l1 = F.l1_loss(refined, x)
        loss, extras = l1, {"l1": l1.detach()}
        if lpips_weight > 0:
            perceptual = lpips_distance(lpips_net, refined, x).mean()
            loss = loss + lpips_weight * perceptual
            extras["lpips"] = perceptual.detach()
        return loss, extras

    return loss_fn


# ------------------------------------------------------------------------------------ training


def build_rqvae(cfg: RQVAEConfig, *, image_size: int) -> RQVAE:
    """A fresh RQ-VAE from the rqvae config section, for images of image_size² px."""
    side = image_size // cfg.downsample
    scales = {"equal": None, "pyramid": pyramid_sides(cfg.levels, side, cfg.first_side)}.get(cfg.scales, cfg.scales)
    return RQVAE(
        levels=cfg.levels, codebook_size=cfg.codebook_size, code_dim=cfg.code_dim, downsample=cfg.downsample,
        channels=cfg.channels, shared_codebook=cfg.shared_codebook, ema_decay=cfg.ema_decay, kmeans_init=cfg.kmeans_init,
        dead_code_threshold=cfg.dead_code_threshold, quantize_dropout=cfg.quantize_dropout,
        commitment_weight=cfg.commitment_weight, norm_groups=cfg.norm_groups, padding_mode=cfg.padding_mode,
        scales=None if scales is None else list(scales),
    )


def train_rqvae(
    *,
    cfg: RQVAEConfig,
    seed: int,
    train_images: torch.Tensor,
    checkpoint_dir: Path,
    fingerprint: str,
    lpips_net: torch.nn.Module | None = None,
    accelerator: Accelerator | None = None,
    on_log: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a fresh RQ-VAE on uint8 images (N, 3, H, W); resumes from a matching checkpoint.

    The EMA codebooks (and their k-means init on the first batch) update inside the model's
    forward in training mode; the loop checkpoints them with the other buffers.
    """
    seed_everything(seed)
    model = build_rqvae(cfg, image_size=train_images.shape[-1]).train()
    return train(
        model=model,
        loss_fn=make_rqvae_loss(recon_loss=cfg.recon_loss, lpips_weight=cfg.lpips_weight, lpips_net=lpips_net),
        dataset=TensorDataset(train_images),
        settings=cosine_settings(cfg, seed=seed),
        checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint,
        accelerator=accelerator,
        on_log=on_log,
        desc="train_rqvae",
    )


@torch.no_grad()
def reconstruct_batches(rqvae: RQVAE, images: torch.Tensor, *, batch_size: int, device: torch.device | str) -> torch.Tensor:
    """Full-level RQ-VAE reconstructions of uint8 images (N, 3, H, W), as float16 on the CPU."""
    rqvae.eval()
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="rqvae recon", leave=False):
        x = to_signed(images[start : start + batch_size].to(device))  # (b, 3, H, W)
        out.append(rqvae(x)[0].clamp(-1, 1).half().cpu())
    return torch.cat(out)  # (N, 3, H, W) float16


def train_refiner(
    *,
    cfg: RefinerConfig,
    seed: int,
    recon: torch.Tensor,
    train_images: torch.Tensor,
    checkpoint_dir: Path,
    fingerprint: str,
    lpips_net: torch.nn.Module | None,
    accelerator: Accelerator | None = None,
    on_log: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a fresh refiner on (frozen RQ-VAE recon, original) pairs; resumes from a matching checkpoint.

    recon: float16 (N, 3, H, W) from `reconstruct_batches`; train_images: uint8 (N, 3, H, W).
    """
    from squeezegen.rq.refiner import Refiner  # imported here: diffusers is slow to import and train_rqvae needs none

    seed_everything(seed)
    model = Refiner.build(channels=cfg.channels, image_size=train_images.shape[-1]).train()
    return train(
        model=model,
        loss_fn=make_refiner_loss(lpips_weight=cfg.lpips_weight, lpips_net=lpips_net),
        dataset=TensorDataset(recon, train_images),
        settings=cosine_settings(cfg, seed=seed),
        checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint,
        accelerator=accelerator,
        on_log=on_log,
        desc="train_refiner",
    )
