"""Labelled picture grids: rows of equal-size images under wrapped captions, a label per row."""

from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont


def labelled_grid(rows: list[list[Image.Image]], *, row_labels: Sequence[str], col_labels: Sequence[str]) -> Image.Image:
    """Paste equal-size images into a grid with a label column on the left and wrapped captions on top."""
    cell = max(rows[0][0].size[0], 128)  # small toy images are shown upscaled so captions fit above them
    font = ImageFont.load_default()
    captions = [_wrap(text, cell // 6) for text in col_labels]
    label_w, line_h = 90, 12
    caption_h = line_h * max(c.count("\n") + 1 for c in captions) + 6
    grid = Image.new("RGB", (label_w + cell * len(rows[0]), caption_h + cell * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for c, text in enumerate(captions):
        draw.multiline_text((label_w + c * cell + 3, 2), text, fill="black", font=font, spacing=2)
    for r, (label, images) in enumerate(zip(row_labels, rows)):
        draw.text((4, caption_h + r * cell + cell // 2 - 6), label, fill="black", font=font)
        for c, image in enumerate(images):
            grid.paste(image.resize((cell, cell), Image.NEAREST), (label_w + c * cell, caption_h + r * cell))
    return grid


def _wrap(text: str, width: int) -> str:
    """Greedy word wrap at `width` characters."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])
