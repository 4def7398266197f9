"""Training the RQ branch with the shared loop (`squeezegen.train.train`): image tensors, the
two loss functions and the two training entry points.

Images are held in memory as uint8 tensors (N, 3, H, W) (a quarter of float32's size) and
turned into [-1, 1] floats batch by batch, inside the loss function.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from squeezegen.config import RefinerConfig, RQVAEConfig
from squeezegen.errors import UserError
from squeezegen.files import atomic_write_text
from squeezegen.metrics import lpips_distance
from squeezegen.rq.model import RQVAE, pyramid_sides
from squeezegen.seed import seed_everything
from squeezegen.train import TrainResult, cosine_settings, train

IMAGE_COLUMN = "image_rq"


# ------------------------------------------------------------------------------------ data


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, 3, H, W) → float32 in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] (B, 3, H, W) → uint8 (clamped, rounded)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def pil_to_uint8(image) -> torch.Tensor:
    """A PIL image → uint8 tensor (3, H, W) (converted to RGB)."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, H, W)


def load_image_tensors(processed_dir: str | Path, split: str, *, column: str = IMAGE_COLUMN) -> torch.Tensor:
    """All images of `split` in the `datasets` folder `processed_dir`, as uint8 (N, 3, H, W).

    Reads `column` (PIL images of one size). UserError if the folder, split or column is missing
    or the split is empty.
    """
    import datasets

    processed_dir = Path(processed_dir)
    if not processed_dir.is_dir():
        raise UserError(f"{processed_dir}: no processed data; run the preprocess stage first")
    try:
        data = datasets.load_from_disk(str(processed_dir))
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"{processed_dir}: not a saved `datasets` folder ({exc}); re-run the preprocess stage") from None
    if split not in data:
        raise UserError(f"{processed_dir}: has no {split!r} split (found {sorted(data)}); re-run the preprocess stage")
    table = data[split]
    if column not in table.column_names:
        raise UserError(f"{processed_dir}/{split}: no {column!r} column (found {table.column_names}); re-run preprocess")
    if len(table) == 0:
        raise UserError(f"{processed_dir}/{split}: no images; lower data.val_fraction or add data")
    images = [pil_to_uint8(img) for img in tqdm(table[column], desc=f"decode {split}", leave=False)]
    sizes = {tuple(t.shape) for t in images}
    if len(sizes) != 1:
        raise UserError(f"{processed_dir}/{split}: {column} images differ in size {sorted(sizes)[:3]}; re-run preprocess")
    return torch.stack(images)  # (N, 3, H, W) uint8


def tensor_hash(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' bytes (the data part of a training fingerprint)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fingerprint(**parts: Any) -> str:
    """sha256 of JSON-able parts (config sections, data hash, weights hash…)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


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
        raise ValueError("lpips_weight > 0 needs an lpips_net (squeezegen.metrics.load_lpips)")

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
        raise ValueError("lpips_weight > 0 needs an lpips_net (squeezegen.metrics.load_lpips)")

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


def write_history_csv(path: str | Path, history: list[dict[str, Any]], columns: list[str]) -> Path:
    """The loop's per-step history as a CSV (for DVC plots), atomically; missing values are left empty."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        return str(value) if isinstance(value, int) else f"{value:.6g}"

    lines = [",".join(columns)] + [",".join(cell(entry.get(c)) for c in columns) for entry in history]
    return atomic_write_text(path, "\n".join(lines) + "\n")
