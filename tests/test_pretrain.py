"""The toy base is pretrained here: a VAE, then a UNet on its latents, into an ordinary diffusers
folder; deterministic; and the rating a caption carries reaches the prompt embedding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from squeezegen.data.captions import PROMPT_SCORE, rated_caption, rating_of
from squeezegen.sd.pretrain import PretrainSettings, encode_prompts, pretrain_tiny
from squeezegen.sd.tiny import build_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CAPTIONS = ("a cubist portrait painting", "a fauvist landscape painting", "a baroque still life painting", "a pop art abstract painting")
SIZE = 32  # px: the tiny pipeline is fully convolutional, so a smaller side keeps the test fast


def toy_images(n: int = 24) -> tuple[torch.Tensor, list[str]]:
    """uint8 images (n, 3, SIZE, SIZE): each caption its own colour and stripe direction."""
    rng = np.random.default_rng(0)
    colours = np.array([[200, 40, 40], [40, 160, 60], [60, 60, 200], [220, 200, 40]], dtype=np.float32)
    images, captions = [], []
    for i in range(n):
        c = i % len(CAPTIONS)
        ramp = np.linspace(0.4, 1.0, SIZE, dtype=np.float32)
        stripes = ramp[None, :] if c % 2 else ramp[:, None]
        image = colours[c][:, None, None] * stripes[None] + rng.normal(0, 8, (3, SIZE, SIZE))
        images.append(np.clip(image, 0, 255).astype(np.uint8))
        captions.append(CAPTIONS[c])
    return torch.from_numpy(np.stack(images)), captions


def settings(**kw) -> PretrainSettings:
    base = dict(vae_steps=12, vae_batch_size=8, vae_lr=2e-3, kl_weight=1e-3, unet_steps=24, unet_batch_size=8,
                unet_lr=2e-3, caption_dropout=0.1, warmup_steps=2, checkpoint_every=100, seed=0)
    return PretrainSettings(**{**base, **kw})


def pretrained(tmp_path: Path, name: str) -> tuple[Path, object]:
    images, captions = toy_images()
    pipe = build_tiny_pipeline(0)
    result = pretrain_tiny(pipe, images, captions, settings(), checkpoint_dir=tmp_path / f"ckpt_{name}")
    pipe.save_pretrained(tmp_path / name, safe_serialization=True)
    return tmp_path / name, result


def test_the_pretrained_base_loads_learns_and_repeats_to_the_byte(tmp_path):
    folder, result = pretrained(tmp_path, "a")
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    assert pipe.vae.config.scaling_factor == pytest.approx(result.scaling_factor) and result.scaling_factor > 0
    assert result.prompts == len(CAPTIONS)
    unet_losses = [h["loss"] for h in result.unet.history]
    assert np.mean(unet_losses[-6:]) < 0.8 * np.mean(unet_losses[:6])  # the denoising loss falls
    l1 = [h["l1"] for h in result.vae.history]
    assert np.mean(l1[-4:]) < np.mean(l1[:4])
    image = pipe(CAPTIONS[0], height=SIZE, width=SIZE, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (SIZE, SIZE)
    again, _ = pretrained(tmp_path, "b")
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors", "vae/config.json"):
        assert (folder / part).read_bytes() == (again / part).read_bytes(), part


def test_a_rating_joins_the_caption_as_documented_and_changes_the_embedding():
    assert rated_caption("a cubist portrait painting", 80) == "a cubist portrait painting, rated 8 of 10"
    assert rated_caption("a cubist portrait painting", 74.9) == "a cubist portrait painting, rated 7 of 10"
    assert rated_caption("a cubist portrait painting", None) == "a cubist portrait painting"
    assert (rating_of(0), rating_of(100), rating_of(PROMPT_SCORE)) == (0, 10, 8)
    with pytest.raises(ValueError, match="0..100"):
        rating_of(101)
    pipe = build_tiny_pipeline(0)
    ids = pipe.tokenizer(rated_caption(CAPTIONS[0], 80)).input_ids
    assert len(ids) <= 12, ids  # bos, 9 words and a comma as whole tokens, eos: the tokenizer learned the rating words
    states = encode_prompts(pipe, [rated_caption(CAPTIONS[0], s) for s in (80, 30)] + [CAPTIONS[0]])
    assert not torch.equal(states[0], states[1]) and not torch.equal(states[0], states[2])


def test_the_lora_dataset_puts_each_images_rating_in_its_prompt():
    from datasets import Dataset
    from PIL import Image

    from squeezegen.sd.lora import CaptionedImages

    image = Image.new("RGB", (SIZE, SIZE))
    rows = Dataset.from_dict({"image_sd": [image] * 3, "caption": list(CAPTIONS[:3]), "score": [82.0, None, 31.0]})
    tokenizer = build_tiny_pipeline(0).tokenizer
    rated = CaptionedImages(rows, tokenizer, resolution=SIZE, prompt_template="{caption}", score_column="score")
    assert rated.prompts == [f"{CAPTIONS[0]}, rated 8 of 10", CAPTIONS[1], f"{CAPTIONS[2]}, rated 3 of 10"]
    plain = CaptionedImages(rows, tokenizer, resolution=SIZE, prompt_template="{caption}")
    assert plain.prompts == list(CAPTIONS[:3])
    assert not torch.equal(rated.input_ids[0], plain.input_ids[0])
