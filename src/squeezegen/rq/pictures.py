"""The progressive picture: per val image, original | 1 level | 2 | … | L | refined.

Each decode is labelled with its PSNR against the original; the refined column shows "—" until
a refiner exists (train_rqvae draws it empty, train_refiner fills it in).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from squeezegen.data.tensors import to_signed
from squeezegen.files import atomic_path
from squeezegen.image_metrics import psnr

TILE_INCHES = 1.6  # size of one image tile in the figure


def _level_label(k: int) -> str:
    return "1 level" if k == 1 else f"{k} levels"


def render_progressive(
    path: str | Path,
    originals: torch.Tensor,
    by_levels: list[torch.Tensor],
    refined: torch.Tensor | None = None,
    *,
    title: str = "",
) -> Path:
    """Write the progressive picture as a PNG at `path` (atomically).

    originals: uint8 (n, 3, H, W); by_levels[k-1]: uint8 decodes with the first k levels;
    refined: uint8 refined full decodes, or None for an empty "—" column.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    columns = [("original", originals)] + [(_level_label(k), t) for k, t in enumerate(by_levels, 1)] + [("refined", refined)]
    rows = originals.shape[0]
    fig, axes = plt.subplots(
        rows, len(columns), figsize=(TILE_INCHES * len(columns), TILE_INCHES * rows + 0.6), squeeze=False
    )
    for c, (label, tiles) in enumerate(columns):
        scores = None if tiles is None or c == 0 else psnr(to_signed(tiles), to_signed(originals))  # (n,)
        for r in range(rows):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=10)
            if tiles is None:
                ax.text(0.5, 0.5, "—", ha="center", va="center", fontsize=20, color="0.5", transform=ax.transAxes)
                for spine in ax.spines.values():
                    spine.set_color("0.85")
                continue
            ax.imshow(tiles[r].permute(1, 2, 0).numpy(), interpolation="nearest")
            if scores is not None:
                ax.set_xlabel(f"{float(scores[r]):.1f} dB", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def save_grid(path: str | Path, images: torch.Tensor, *, columns: int | None = None, min_tile: int = 128) -> Path:
    """uint8 images (n, 3, H, W) as one PNG grid (nearest-neighbour upscaled to ≥ min_tile px), atomically."""
    from PIL import Image

    n, _, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    scale = max(1, math.ceil(min_tile / max(h, w)))
    gap = 2
    sheet = Image.new("RGB", (columns * (w * scale + gap) + gap, rows * (h * scale + gap) + gap), (255, 255, 255))
    for i, image in enumerate(images):
        tile = Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).resize((w * scale, h * scale), Image.Resampling.NEAREST)
        r, c = divmod(i, columns)
        sheet.paste(tile, (gap + c * (w * scale + gap), gap + r * (h * scale + gap)))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)
