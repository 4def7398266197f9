"""A Stable Diffusion 1.5-architecture pipeline with random weights, built from configs (no download).

Memory does not depend on the weights' values, so this pipeline measures real-scale memory
anywhere: the UNet, VAE and CLIP text encoder configs below are SD 1.5's own
(stable-diffusion-v1-5/stable-diffusion-v1-5: unet/, vae/, text_encoder/config.json), written
out so that nothing is fetched. The only stand-in is the tokenizer: a character-level CLIP
tokenizer (byte alphabet, no merges) that still pads to SD's 77 tokens, so the text encoder
runs on sequences of the real length with its real 49,408-row embedding table.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from squeezegen.files import atomic_path

SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
)

SD15_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)

SD15_TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)

SD15_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,  # SD 1.5's value; also silences diffusers' FutureWarning
)

SD15_UNET_PARAMS = 859_520_964  # parameter count of the real SD 1.5 UNet (a self-check for the config)


def character_clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer over the 256 byte-level characters (each also with CLIP's `</w>` word-end
    suffix) and no merges: ids stay far below SD's vocabulary size, and prompts still pad to 77."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    alphabet = sorted(ByteLevel.alphabet())
    for suffix in ("", "</w>"):
        vocab.update({ch + suffix: len(vocab) + i for i, ch in enumerate(alphabet)})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def build_sd15_components(*, seed: int = 0, device: str | torch.device = "cpu") -> dict:
    """UNet, VAE, text encoder (fp32, random init seeded by `seed`, on `device`), tokenizer, scheduler.

    Building directly on a GPU (`device="cuda"`) initializes the ~1 B parameters in a second
    instead of ~a minute on a few CPU cores.
    """
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG))
    for model in (unet, vae, text_encoder):
        model.requires_grad_(False).eval()
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=character_clip_tokenizer(),
        scheduler=DPMSolverMultistepScheduler(**SD15_SCHEDULER_CONFIG),
    )


def build_sd15_pipeline(*, seed: int = 0, device: str | torch.device = "cpu") -> StableDiffusionPipeline:
    """The SD 1.5-architecture StableDiffusionPipeline with random weights (fp32, on `device`)."""
    return StableDiffusionPipeline(
        **build_sd15_components(seed=seed, device=device),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_sd15_pipeline(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    build_device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write the random SD 1.5-architecture pipeline as a diffusers folder (weights in `dtype`,
    safetensors) that `StableDiffusionPipeline.from_pretrained(out_dir)` loads offline."""
    pipe = build_sd15_pipeline(seed=seed, device=build_device)
    pipe.to(dtype=dtype)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    del pipe
    return out_dir


def prepare_sd15_files(
    work_dir: str | os.PathLike,
    *,
    policy,
    seed: int = 0,
    text_encoder_8bit: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[Path, Path, dict]:
    """Write the random SD 1.5-architecture pipeline (fp16) to `work_dir/base` and its quantized
    files (Q4_K UNet under `policy`, 8-bit text encoder) to `work_dir/quantized`.

    Returns (base_dir, quant_dir, quantize metrics). `device` is where the random weights are
    initialized and the text encoder is quantized. Needs ~2 GB of disk in `work_dir`.
    """
    from squeezegen.quant.pipeline import quantize_pipeline

    work_dir = Path(work_dir)
    base_dir = save_sd15_pipeline(work_dir / "base", seed=seed, build_device=device)
    metrics, _ = quantize_pipeline(
        base_dir,
        work_dir / "quantized",
        policy=policy,
        text_encoder_8bit=text_encoder_8bit,
        metadata={"base_model": "sd15-architecture-random", "seed": seed},
        device=device,
        progress=progress,
    )
    return base_dir, work_dir / "quantized", metrics
