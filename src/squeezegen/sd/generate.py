"""Plain (uncompressed) text-to-image with a base pipeline folder and an optional LoRA adapter,
plus the labelled before/after sample grid of the LoRA stage.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from squeezegen.data.captions import GENRES, PROMPT_SCORE, STYLES, caption_for, rated_caption
from squeezegen.device import default_device
from squeezegen.errors import UserError
from squeezegen.model_folder import check_lora_folder, check_pipeline_folder
from squeezegen.pictures import labelled_grid


def sample_prompts(n: int, template: str = "{caption}", *, score: float | None = PROMPT_SCORE) -> list[str]:
    """`n` fixed LAPIS-style prompts asking for `score`: styles spread over the style list, genres cycling."""
    return [template.format(caption=rated_caption(caption_for(STYLES[i * len(STYLES) // n], GENRES[i % len(GENRES)]), score))
            for i in range(n)]


def load_pipeline(
    base_dir: str | os.PathLike, *, lora_dir: str | os.PathLike | None = None, device: str | None = None
) -> StableDiffusionPipeline:
    """The pipeline in `base_dir` (fp16 on CUDA, fp32 on CPU), with the LoRA in `lora_dir` loaded if given.

    The adapter stays separate (not fused): `pipe.set_adapters(...)` can still weigh it.
    """
    device = device or str(default_device())
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    check_pipeline_folder(base_dir)
    if lora_dir is not None:
        check_lora_folder(lora_dir)
    pipe = StableDiffusionPipeline.from_pretrained(
        str(base_dir), dtype=dtype, safety_checker=None, requires_safety_checker=False
    )
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def run_pipeline(
    pipe: StableDiffusionPipeline, prompt: str, *, seed: int, steps: int, size: int, guidance_scale: float = 7.5
) -> Image.Image:
    """One image from a loaded pipeline; the noise comes from a CPU generator seeded with `seed`.

    A CPU generator makes the starting noise the same on every device. Prompts longer than the
    tokenizer's limit (77 tokens) are truncated by the pipeline, with a warning.
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(
        prompt, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generator
    ).images[0]


def generate_image(
    base_dir: str | os.PathLike,
    prompt: str,
    *,
    lora_dir: str | os.PathLike | None = None,
    seed: int = 0,
    steps: int = 25,
    size: int = 512,
    guidance_scale: float = 7.5,
    device: str | None = None,
) -> Image.Image:
    """Text → PIL image with the base pipeline (+ LoRA). Loads the models from disk on every call."""
    if size % 8:
        raise UserError(f"image size must be a multiple of 8 (the VAE downsamples 8×), got {size}")
    pipe = load_pipeline(base_dir, lora_dir=lora_dir, device=device)
    return run_pipeline(pipe, prompt, seed=seed, steps=steps, size=size, guidance_scale=guidance_scale)


def before_after_grid(
    base_dir: str | os.PathLike,
    lora_dir: str | os.PathLike,
    prompts: Sequence[str],
    *,
    seed: int,
    steps: int,
    size: int,
    guidance_scale: float = 7.5,
    device: str | None = None,
) -> Image.Image:
    """A labelled grid: one column per prompt (seed + column index), row 1 base, row 2 base + LoRA."""
    pipe = load_pipeline(base_dir, lora_dir=lora_dir, device=device)
    rows = []
    for weight in (0.0, 1.0):  # the adapter at weight 0 is exactly the base model
        pipe.set_adapters(pipe.get_active_adapters(), adapter_weights=[weight] * len(pipe.get_active_adapters()))
        rows.append([
            run_pipeline(pipe, prompt, seed=seed + i, steps=steps, size=size, guidance_scale=guidance_scale)
            for i, prompt in enumerate(prompts)
        ])
    return labelled_grid(rows, row_labels=["base", "base + LoRA"], col_labels=list(prompts))
