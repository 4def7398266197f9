"""Training the judge with the shared loop (`squeezegen.training.train`) on the processed data only.

The judge is the referee of every generator, so its data is exactly one thing: a split of
`data/processed` (`load_judge_data`), real images with their LAPIS-style labels. Nothing here
reads a model folder or a generated image. Images stay uint8 (N, 3, S, S) in memory and become
[-1, 1] floats batch by batch inside the loss function (where the random flips happen too).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import TensorDataset

from squeezegen.config import JudgeConfig
from squeezegen.data.captions import GENRES, STYLES
from squeezegen.data.tensors import IMAGE_COLUMN, load_split_table, table_images
from squeezegen.errors import UserError
from squeezegen.judge.model import Judge, judge_images
from squeezegen.seed import seed_everything
from squeezegen.training import TrainResult, cosine_settings, train

IGNORE = -100  # label of an image whose style / genre is not one the judge knows (cross-entropy skips it)


@dataclass(frozen=True)
class JudgeData:
    """One split of the processed data as tensors (the judge's only input)."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    style: torch.Tensor  # (N,) int64 index into STYLES, IGNORE if unknown
    genre: torch.Tensor  # (N,) int64 index into GENRES, IGNORE if unknown
    score: torch.Tensor  # (N,) float32 mean rating 0-100, NaN if unrated

    def __len__(self) -> int:
        return len(self.images)

    def digest(self) -> str:
        """sha256 of every tensor's bytes (the data part of the training fingerprint)."""
        h = hashlib.sha256()
        for t in (self.images, self.style, self.genre, self.score):
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()


def _labels(values: list[Any], classes: tuple[str, ...]) -> torch.Tensor:
    index = {name: i for i, name in enumerate(classes)}
    return torch.tensor([index.get(v, IGNORE) for v in values], dtype=torch.long)  # (N,)


def load_judge_data(processed_dir: str | Path, split: str, *, column: str = IMAGE_COLUMN) -> JudgeData:
    """`split` of the `datasets` folder `processed_dir` (the preprocess stage's output) as `JudgeData`.

    UserError if the folder, split or a column is missing, the split is empty, images differ in
    size, or no image has a label the judge can learn from.
    """
    table = load_split_table(processed_dir, split, [column, "style", "genre", "score"])
    images = table_images(table, column, where=f"{processed_dir}/{split}")  # (N, 3, S, S) uint8
    scores = torch.tensor([math.nan if s is None else float(s) for s in table["score"]], dtype=torch.float32)
    out = JudgeData(images=images, style=_labels(table["style"], STYLES), genre=_labels(table["genre"], GENRES), score=scores)
    if bool((out.style == IGNORE).all() & (out.genre == IGNORE).all() & out.score.isnan().all()):
        raise UserError(
            f"{processed_dir}/{split}: no image has a known style, genre or a score, so the judge has nothing to learn; "
            "use a source with LAPIS labels (data.source: synthetic or lapis)"
        )
    return out


# ------------------------------------------------------------------------------------ training


def _masked_ce(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    if bool((labels == IGNORE).all()):  # no labelled image in this batch: no signal, no NaN
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, label_smoothing=smoothing)


def augment(x: torch.Tensor, *, flip: bool, shift: int) -> torch.Tensor:
    """Random horizontal flips (per image) and a random translation of up to `shift` px (per batch,
    reflect-padded) of images (B, 3, S, S); draws from torch's global RNG (seeded, checkpointed)."""
    if flip:
        flipped = torch.rand(x.shape[0], device=x.device) < 0.5  # (B,)
        x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
    if shift > 0:
        size = x.shape[-1]
        dy, dx = torch.randint(0, 2 * shift + 1, (2,)).tolist()
        x = F.pad(x, (shift, shift, shift, shift), mode="reflect")[..., dy : dy + size, dx : dx + size]  # (B, 3, S, S)
    return x


def make_judge_loss(cfg: JudgeConfig, *, score_mean: float, score_std: float) -> Callable:
    """loss_fn(model, batch, step): weighted style CE + genre CE + MSE of the standardized score."""

    def loss_fn(model, batch, step):
        images, style, genre, score = batch  # (B, 3, S, S) uint8, (B,), (B,), (B,)
        x = augment(images.float() / 127.5 - 1.0, flip=cfg.flip, shift=cfg.shift)  # (B, 3, S, S) in [-1, 1]
        out = model(x)
        style_ce = _masked_ce(out["style_logits"], style, cfg.label_smoothing)
        genre_ce = _masked_ce(out["genre_logits"], genre, cfg.label_smoothing)
        rated = ~score.isnan()  # (B,)
        target = (score - score_mean) / score_std  # (B,) standardized
        score_mse = F.mse_loss(out["score_z"].float()[rated], target[rated]) if bool(rated.any()) else out["score_z"].sum() * 0.0
        loss = cfg.style_weight * style_ce + cfg.genre_weight * genre_ce + cfg.score_weight * score_mse
        return loss, {"style_ce": style_ce.detach(), "genre_ce": genre_ce.detach(), "score_mse": score_mse.detach()}

    return loss_fn


def build_judge(cfg: JudgeConfig, *, image_size: int, score_mean: float, score_std: float) -> Judge:
    """A fresh judge for LAPIS's styles and genres, its score scale set from the train split."""
    model = Judge(channels=cfg.channels, image_size=image_size, styles=STYLES, genres=GENRES, dropout=cfg.dropout)
    model.score_mean.fill_(score_mean)
    model.score_std.fill_(score_std)
    return model


def score_scale(data: JudgeData) -> tuple[float, float]:
    """(mean, std) of the rated images' scores (std at least 1 point, so a constant score cannot divide by 0)."""
    rated = data.score[~data.score.isnan()].double()
    if len(rated) == 0:
        return 50.0, 15.0
    return float(rated.mean()), max(float(rated.std(unbiased=False)), 1.0)


def train_judge(
    *,
    cfg: JudgeConfig,
    seed: int,
    data: JudgeData,
    checkpoint_dir: Path,
    fingerprint: str,
    accelerator: Accelerator | None = None,
    on_log: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a fresh judge on `data` (the processed train split); resumes from a matching checkpoint."""
    seed_everything(seed)
    mean, std = score_scale(data)
    model = build_judge(cfg, image_size=int(data.images.shape[-1]), score_mean=mean, score_std=std).train()
    return train(
        model=model,
        loss_fn=make_judge_loss(cfg, score_mean=mean, score_std=std),
        dataset=TensorDataset(data.images, data.style, data.genre, data.score),
        settings=cosine_settings(cfg, seed=seed),
        checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint,
        accelerator=accelerator,
        on_log=on_log,
        desc="train_judge",
    )


# ------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate_judge(judge: Judge, data: JudgeData, *, train_score_mean: float, batch_size: int = 128) -> dict[str, Any]:
    """Val metrics: style / genre accuracy (over labelled images) with chance levels, score MAE and R².

    Chance: `*_chance` is 1 / classes, `*_majority` the accuracy of always answering the most
    common val class; `score_mae_baseline` is the MAE of always answering the train mean (R² 0).
    """
    result = judge_images(judge, data.images, batch_size=batch_size)
    metrics: dict[str, Any] = {"n_val": len(data)}
    for name, labels, classes in (("style", data.style, judge.styles), ("genre", data.genre, judge.genres)):
        known = labels != IGNORE
        pred = torch.tensor([classes.index(p) for p in result[f"{name}_pred"]])
        counts = torch.bincount(labels[known], minlength=len(classes))
        metrics[f"{name}_acc"] = float((pred[known] == labels[known]).float().mean()) if bool(known.any()) else None
        metrics[f"{name}_chance"] = round(1.0 / len(classes), 6)
        metrics[f"{name}_majority"] = float(counts.max() / known.sum()) if bool(known.any()) else None
    rated = ~data.score.isnan()
    truth, pred = data.score[rated].double().numpy(), torch.from_numpy(result["scores"])[rated].double().numpy()
    if len(truth) >= 2:
        sst = float(((truth - truth.mean()) ** 2).sum())
        metrics["score_mae"] = float(np.abs(pred - truth).mean())
        metrics["score_r2"] = 1.0 - float(((pred - truth) ** 2).sum()) / sst if sst > 0 else None
        metrics["score_mae_baseline"] = float(np.abs(train_score_mean - truth).mean())
    else:
        metrics.update(score_mae=None, score_r2=None, score_mae_baseline=None)
    return metrics
