"""Processed images as tensors: uint8 (N, 3, H, W) in memory, [-1, 1] floats for the models.

Images are held as uint8 (a quarter of float32's size) and turned into floats batch by batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from squeezegen.errors import UserError

IMAGE_COLUMN = "image_rq"  # the processed dataset's column at the RQ branch's size


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


def load_split_table(processed_dir: str | Path, split: str, columns: Sequence[str]):
    """`split` of the `datasets` folder `processed_dir` (the preprocess stage's output), as a
    `datasets.Dataset`; UserError if the folder, the split or one of `columns` is missing, or the
    split is empty."""
    import datasets

    processed_dir = Path(processed_dir)
    if not processed_dir.is_dir():
        raise UserError(f"{processed_dir}: no processed data; run the preprocess stage first (`dvc repro preprocess`)")
    try:
        data = datasets.load_from_disk(str(processed_dir))
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"{processed_dir}: not a saved `datasets` folder ({exc}); re-run the preprocess stage") from None
    if split not in data:
        raise UserError(f"{processed_dir}: has no {split!r} split (found {sorted(data)}); re-run the preprocess stage")
    table = data[split]
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise UserError(f"{processed_dir}/{split}: no {missing} column (found {table.column_names}); re-run preprocess")
    if len(table) == 0:
        raise UserError(f"{processed_dir}/{split}: no images; lower data.val_fraction or add data")
    return table


def table_images(table, column: str, *, where: str) -> torch.Tensor:
    """The PIL images of `column` as uint8 (N, 3, H, W); UserError (naming `where`) if they differ in size."""
    images = [pil_to_uint8(img) for img in tqdm(table[column], desc=f"decode {where}", leave=False)]
    sizes = {tuple(t.shape) for t in images}
    if len(sizes) != 1:
        raise UserError(f"{where}: {column} images differ in size {sorted(sizes)[:3]}; re-run preprocess")
    return torch.stack(images)  # (N, 3, H, W) uint8


def load_image_tensors(processed_dir: str | Path, split: str, *, column: str = IMAGE_COLUMN) -> torch.Tensor:
    """All images of `split` in the `datasets` folder `processed_dir`, as uint8 (N, 3, H, W).

    Reads `column` (PIL images of one size). UserError if the folder, split or column is missing,
    the split is empty or the images differ in size.
    """
    table = load_split_table(processed_dir, split, [column])
    return table_images(table, column, where=f"{processed_dir}/{split}")
