"""The judge: a small CNN that reads style, genre and score from an image, and what evaluate asks of it.

It is the referee every generator is measured by, so it is trained on real images only
(`squeezegen.judge.train`). An image (B, 3, S, S) in [-1, 1] goes through a stride-2 stem and
one strided residual stage per entry of `channels` (the side ends at S / 2^(1 + len(channels))),
is average-pooled to a feature vector (B, D), and three heads read style logits, genre logits
and a standardized score; `forward` returns the score on the 0-100 scale. The features are
what `fd_judge` compares (`frechet_distance`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from squeezegen.errors import UserError
from squeezegen.model_folder import load_model_folder, save_model_folder

FORMAT = "squeezegen.judge/1"


class DownBlock(nn.Module):
    """Strided 3×3 conv (halves the side) → BN → SiLU → 3×3 conv → BN, plus a strided 1×1 skip; SiLU."""

    def __init__(self, *, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.skip = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.body(x) + self.skip(x))  # (B, C_out, H/2, W/2)


class Judge(nn.Module):
    """Style / genre classifier and score regressor; see the module docstring.

    `score_mean` / `score_std` (buffers, set from the train split) turn the standardized score
    head back into points; `styles` / `genres` name the classes (index = logit position).
    """

    def __init__(
        self, *, channels: Sequence[int], image_size: int, styles: Sequence[str], genres: Sequence[str], dropout: float = 0.0
    ):
        super().__init__()
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must list positive widths, got {list(channels)}")
        self.config = {
            "channels": list(channels), "image_size": int(image_size), "styles": list(styles), "genres": list(genres),
            "dropout": float(dropout),
        }
        self.image_size = int(image_size)
        self.styles, self.genres = tuple(styles), tuple(genres)
        # A 4×4 stride-2 patchify stem: at full resolution the stem's norm and activation alone cost
        # ~5× the rest of the network on a CPU, and 2×2 pixel patches still show 1-px marks.
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels[0], 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels[0]), nn.SiLU()
        )
        widths = [channels[0], *channels]
        self.blocks = nn.Sequential(*[DownBlock(in_channels=a, out_channels=b) for a, b in zip(widths[:-1], widths[1:])])
        self.feature_dim = channels[-1]
        self.dropout = nn.Dropout(dropout)  # on the pooled features, before the heads (training only)
        self.style_head = nn.Linear(self.feature_dim, len(styles))
        self.genre_head = nn.Linear(self.feature_dim, len(genres))
        self.score_head = nn.Linear(self.feature_dim, 1)
        self.register_buffer("score_mean", torch.tensor(50.0))
        self.register_buffer("score_std", torch.tensor(15.0))
        self.meta: dict[str, Any] = {}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) in [-1, 1] → pooled features (B, D)."""
        return self.blocks(self.stem(images)).mean(dim=(2, 3))  # (B, D)

    def heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features (B, D) → style_logits (B, n_styles), genre_logits (B, n_genres), score_z (B,) standardized."""
        features = self.dropout(features)
        return {
            "style_logits": self.style_head(features),
            "genre_logits": self.genre_head(features),
            "score_z": self.score_head(features).squeeze(-1),  # (B,)
        }

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images (B, 3, S, S) in [-1, 1], S = `image_size` (see `prepare_images` for other sizes).

        Returns style_logits, genre_logits, score_z, score (B,) on the 0-100 scale, features (B, D).
        """
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"the judge reads (B, 3, {self.image_size}, {self.image_size}) images, got {tuple(images.shape)}; "
                "resize with squeezegen.judge.prepare_images"
            )
        features = self.features(images)  # (B, D)
        out = self.heads(features)
        out["score"] = out["score_z"] * self.score_std + self.score_mean  # (B,) points
        out["features"] = features
        return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prepare_images(judge: Judge, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) as uint8 or floats in [-1, 1] → float (B, 3, S, S) in [-1, 1] at the judge's size.

    Other sizes are resized (bilinear, antialiased when shrinking) here, explicitly, never inside
    `forward`: a referee that silently rescales would hide a wrong resolution.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()  # (B, 3, H, W)
    size = judge.image_size
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    return x.clamp(-1, 1)  # (B, 3, S, S)


# ------------------------------------------------------------------------------------ saving


def save_judge(model: Judge, out_dir: str | Path, *, meta: dict[str, Any] | None = None) -> Path:
    """Write `out_dir/` = model.safetensors + config.json (architecture, class names, image size, meta), atomically."""
    return save_model_folder(model, out_dir, {
        "format": FORMAT,
        "model": model.config,
        "styles": list(model.styles),
        "genres": list(model.genres),
        "image_size": model.image_size,
        "score_mean": float(model.score_mean),
        "score_std": float(model.score_std),
        "meta": meta or {},
    })


def load_judge(model_dir: str | Path, device: torch.device | str = "cpu") -> Judge:
    """The judge saved by `save_judge`, in eval mode on `device`; UserError if `model_dir` holds none."""
    return load_model_folder(model_dir, lambda config: Judge(**config["model"]), what="judge", fmt=FORMAT,
                             stage="train_judge", device=device)


# ------------------------------------------------------------------------------------ judging


def class_indices(names: Sequence[str | int] | None, classes: Sequence[str], what: str) -> torch.Tensor | None:
    """Labels as class indices (N,); names must be in `classes` (ints are taken as indices)."""
    if names is None:
        return None
    lookup = {name: i for i, name in enumerate(classes)}
    out = []
    for name in names:
        if isinstance(name, (int, np.integer)):
            out.append(int(name))
        elif name in lookup:
            out.append(lookup[name])
        else:
            raise UserError(f"unknown {what} {name!r}; the judge knows: {', '.join(classes)}")
    return torch.tensor(out, dtype=torch.long)


@torch.no_grad()
def judge_images(
    judge: Judge,
    images: torch.Tensor,
    *,
    styles: Sequence[str | int] | None = None,
    genres: Sequence[str | int] | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Run the judge over images (N, 3, H, W) (uint8, or floats in [-1, 1]; resized to its size).

    Returns score_mean (points), scores (N,), style_pred / genre_pred (N,) class names and
    features (N, D) as numpy; with labels (names or indices, N each) also style_acc / genre_acc.
    """
    if len(images) == 0:
        raise UserError("judge_images: no images to judge")
    was_training = judge.training
    judge.eval()
    device = next(judge.parameters()).device
    style_true = class_indices(styles, judge.styles, "style")
    genre_true = class_indices(genres, judge.genres, "genre")
    for labels, what in ((style_true, "styles"), (genre_true, "genres")):
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{what}: {len(labels)} labels for {len(images)} images")
    style_pred, genre_pred, scores, features = [], [], [], []
    for start in range(0, len(images), batch_size):
        x = prepare_images(judge, images[start : start + batch_size]).to(device)  # (b, 3, S, S)
        out = judge(x)
        style_pred.append(out["style_logits"].argmax(-1).cpu())
        genre_pred.append(out["genre_logits"].argmax(-1).cpu())
        scores.append(out["score"].float().cpu())
        features.append(out["features"].float().cpu())
    judge.train(was_training)
    style_idx, genre_idx, score = torch.cat(style_pred), torch.cat(genre_pred), torch.cat(scores)  # (N,) each
    result: dict[str, Any] = {
        "score_mean": float(score.mean()),
        "scores": score.numpy(),
        "style_pred": [judge.styles[i] for i in style_idx.tolist()],
        "genre_pred": [judge.genres[i] for i in genre_idx.tolist()],
        "features": torch.cat(features).numpy(),  # (N, D)
    }
    if style_true is not None:
        result["style_acc"] = float((style_idx == style_true).float().mean())
    if genre_true is not None:
        result["genre_acc"] = float((genre_idx == genre_true).float().mean())
    return result


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D) (`FrechetReference`)."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise UserError(f"frechet_distance needs at least 2 samples per set (a covariance), got {len(a)} and {len(b)}")
    return FrechetReference(a).distance(b)


class FrechetReference:
    """Fréchet distances to one fixed feature set (M, D), its statistics computed once.

    d² = |μ − μr|² + Tr(Σ) + Tr(Σr) − 2·Tr((Σr^½ Σ Σr^½)^½). The cross term is computed from the
    symmetric PSD matrix Σr^½ Σ Σr^½ with eigh (negative round-off eigenvalues clipped to 0), which
    is stable where sqrtm(Σr Σ) of a singular product goes complex; float64. Σr^½ is computed once,
    so each distance costs one eigvalsh: the bootstrap asks for thousands.
    """

    def __init__(self, features: np.ndarray):
        ref = np.asarray(features, np.float64)
        if ref.ndim != 2 or len(ref) < 2:
            raise ValueError(f"reference features must be (M ≥ 2, D), got {ref.shape}")
        self.mean = ref.mean(0)  # (D,)
        self.cov = np.atleast_2d(np.cov(ref, rowvar=False))  # (D, D)
        vals, vecs = np.linalg.eigh(self.cov)
        self.cov_sqrt = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T  # Σr^½

    def distance(self, features: np.ndarray) -> float:
        """d² between Gaussians fitted to `features` (N ≥ 2, D) and to the reference."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or len(x) < 2 or x.shape[1] != len(self.mean):
            raise ValueError(f"features must be (N ≥ 2, {len(self.mean)}), got {x.shape}")
        cov = np.atleast_2d(np.cov(x, rowvar=False))  # (D, D)
        middle = self.cov_sqrt @ cov @ self.cov_sqrt
        cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
        distance = float(((x.mean(0) - self.mean) ** 2).sum() + np.trace(cov) + np.trace(self.cov) - 2 * cross)
        return max(distance, 0.0)  # round-off can leave -1e-12 for identical sets
