"""Training the prior with the shared loop: the frozen RQ-VAE's codes of the train split are its data.

The codes are computed once per run (`encode_codes`), with each image's style, genre and mean
score as its condition. Condition dropout (for classifier-free guidance) is a pure function of
(seed, step), so a resumed run drops exactly what an uninterrupted one would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import TensorDataset

from squeezegen.config import PriorConfig
from squeezegen.errors import UserError
from squeezegen.rq.model import RQVAE
from squeezegen.rq.prior import ConditionedPrior, PriorSpec, build_prior
from squeezegen.seed import seed_everything
from squeezegen.training import TrainResult, cosine_settings, train


def load_conditions(processed_dir: str | Path, split: str) -> tuple[list[str], list[str], np.ndarray]:
    """(styles, genres, scores) of `split`, in row order (the order `load_image_tensors` uses)."""
    import datasets

    table = datasets.load_from_disk(str(processed_dir))[split]
    missing = {"style", "genre", "score"} - set(table.column_names)
    if missing:
        raise UserError(f"{processed_dir}/{split}: no {sorted(missing)} column(s); re-run the preprocess stage")
    styles = [s or "" for s in table["style"]]
    genres = [g or "" for g in table["genre"]]
    return styles, genres, np.asarray(table["score"], dtype=np.float32)


def vocabulary(names: Sequence[str]) -> tuple[str, ...]:
    """The sorted distinct non-empty names: a condition vocabulary (index order of the embeddings)."""
    return tuple(sorted({n for n in names if n}))


def condition_tensors(spec: PriorSpec, styles: Sequence[str], genres: Sequence[str], scores: np.ndarray):
    """(style, genre, score, score_known) tensors (M,); a name outside the vocabulary → the null index."""
    style_index = {s: i for i, s in enumerate(spec.styles)}
    genre_index = {g: i for i, g in enumerate(spec.genres)}
    style = torch.tensor([style_index.get(s, len(spec.styles)) for s in styles])
    genre = torch.tensor([genre_index.get(g, len(spec.genres)) for g in genres])
    score = torch.from_numpy(np.nan_to_num(scores, nan=0.0)).float()
    return style, genre, score, torch.from_numpy(~np.isnan(scores))


def prior_spec(cfg: PriorConfig, *, rqvae: RQVAE, styles, genres, grid_hw) -> PriorSpec:
    """The prior's shape from its config and the RQ-VAE whose codes it will model (on a grid_hw grid)."""
    h, w = grid_hw
    if cfg.kind == "rq_transformer" and rqvae.pyramid:
        raise UserError(
            f"prior.kind=rq_transformer draws {rqvae.levels} codes at every grid position, but this RQ-VAE's levels are a "
            f"pyramid of grids {rqvae.scales}; set prior.kind=next_scale, or rqvae.scales=equal and re-run train_rqvae"
        )
    return PriorSpec(
        levels=rqvae.levels, codebook_size=rqvae.codebook_size, positions=h * w, styles=vocabulary(styles),
        genres=vocabulary(genres), width=cfg.width, heads=cfg.heads, spatial_layers=cfg.spatial_layers,
        depth_width=cfg.depth_width, depth_layers=cfg.depth_layers, grid_hw=(h, w),
        cond_every_position=cfg.cond_every_position, cond_modulation=cfg.cond_modulation, kind=cfg.kind,
        scales=tuple(rqvae.level_sides(h)) if cfg.kind == "next_scale" else (),
    )


def prior_data(spec: PriorSpec, rqvae: RQVAE, codes: torch.Tensor) -> torch.Tensor:
    """What the prior of `spec` models, from the RQ-VAE's codes: (M, N, L) for an RQ-Transformer, tokens (M, T) for a next-scale prior."""
    return rqvae.to_tokens(codes) if spec.kind == "next_scale" else codes


def make_prior_loss(*, cond_dropout: float, seed: int) -> Callable:
    """loss_fn(model, batch, step): cross-entropy of every code, conditions dropped at random."""

    def loss_fn(model, batch, step):
        codes, style, genre, score, known = batch
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)  # the same drops on resume
        style, genre, known = model.drop_conditions(style.cpu(), genre.cpu(), known.cpu(), cond_dropout, generator)
        device = codes.device
        prefix = model.condition_tokens(style.to(device), genre.to(device), score, known.to(device))  # (B, 3, d)
        return model.loss(codes, prefix)

    return loss_fn


def train_prior(
    *,
    cfg: PriorConfig,
    spec: PriorSpec,
    seed: int,
    codes: torch.Tensor,
    conditions: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    checkpoint_dir: Path,
    fingerprint: str,
    accelerator: Accelerator | None = None,
    on_log: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a fresh prior on its data (`prior_data`) with their conditions; resumes from a matching checkpoint."""
    seed_everything(seed)
    model = build_prior(spec).train()
    return train(
        model=model,
        loss_fn=make_prior_loss(cond_dropout=cfg.cond_dropout, seed=seed),
        dataset=TensorDataset(codes, *conditions),
        settings=cosine_settings(cfg, seed=seed),
        checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint,
        accelerator=accelerator,
        on_log=on_log,
        desc="train_prior",
    )


@torch.no_grad()
def code_nll(model: ConditionedPrior, codes: torch.Tensor, conditions, *, batch_size: int = 64, conditional: bool = True) -> float:
    """Mean negative log-likelihood (nats per code) of the prior's data (`prior_data`), with or without the conditions."""
    model.eval()
    device = next(model.parameters()).device
    style, genre, score, known = conditions
    if not conditional:
        style = torch.full_like(style, model.null_style)
        genre = torch.full_like(genre, model.null_genre)
        known = torch.zeros_like(known)
    total, count = 0.0, 0
    for i in range(0, len(codes), batch_size):
        part = slice(i, i + batch_size)
        prefix = model.condition_tokens(style[part].to(device), genre[part].to(device), score[part].to(device), known[part].to(device))
        batch = codes[part].to(device)
        total += model.loss(batch, prefix).item() * batch.numel()
        count += batch.numel()
    return total / count
