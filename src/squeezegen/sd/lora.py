"""LoRA fine-tuning of a Stable Diffusion UNet, the way diffusers' train_text_to_image_lora.py does it.

Freeze the base → `unet.add_adapter(LoraConfig(...))` on the attention projections → upcast the
trainable weights to fp32 → train on the epsilon (or v) target of noised VAE latents, through the
shared loop (`squeezegen.training.train`, so it resumes exactly and runs under `accelerate launch`)
→ save only the adapter, in diffusers format, as safetensors (`pipe.load_lora_weights(dir)`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import cast_training_params, compute_snr
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from torch.utils.data import Dataset
from torchvision import transforms
from transformers import CLIPTextModel, CLIPTokenizer

from squeezegen.data.captions import rated_caption
from squeezegen.files import atomic_path, sha256_file
from squeezegen.model_folder import check_pipeline_folder
from squeezegen.seed import seed_everything
from squeezegen.training import LoopSettings, TrainResult, make_accelerator, train

ADAPTER_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' save/load_lora_weights use


@dataclass(frozen=True)
class LoraSettings:
    """Everything a LoRA run depends on besides the base model and the data (cfg.lora + a few more)."""

    rank: int  # LoRA rank r
    alpha: float  # LoRA alpha; updates are scaled by alpha / rank
    target_modules: tuple[str, ...]  # UNet module names that get adapters
    lr: float
    max_steps: int
    batch_size: int
    checkpoint_every: int
    seed: int
    resolution: int  # training images are resized/cropped to this square size (px)
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    min_snr_gamma: float | None = None  # min-SNR-γ loss weighting (Hang et al. 2023); None = plain MSE
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    num_workers: int = 0
    prompt_template: str = "{caption}"
    rating_in_caption: bool = False  # append each image's rating ("…, rated 8 of 10", data.captions.rated_caption)

    def loop_settings(self) -> LoopSettings:
        return LoopSettings(
            max_steps=self.max_steps, lr=self.lr, lr_scheduler=self.lr_scheduler, warmup_steps=self.warmup_steps,
            weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm, grad_accum=self.grad_accum,
            mixed_precision=self.mixed_precision, checkpoint_every=self.checkpoint_every, seed=self.seed,
            use_8bit_adam=self.use_8bit_adam, batch_size=self.batch_size, num_workers=self.num_workers,
        )


@dataclass
class LoraResult:
    """A finished LoRA run."""

    adapter_path: Path | None  # out_dir / pytorch_lora_weights.safetensors (None on non-main processes)
    trainable_params: int  # LoRA parameters
    total_params: int  # all UNet parameters, adapter included (peft's "all params")
    train: TrainResult


class CaptionedImages(Dataset):
    """(image, caption[, score]) rows → {"pixel_values": (3, R, R) in [-1, 1], "input_ids": (77,)}, no randomness."""

    def __init__(self, rows: Any, tokenizer: CLIPTokenizer, *, resolution: int, prompt_template: str,
                 image_column: str = "image_sd", caption_column: str = "caption", score_column: str | None = None) -> None:
        self.rows = rows
        self.image_column = image_column
        captions = rows[caption_column]
        if score_column is not None:  # the image's rating joins its caption; an unrated image keeps the caption alone
            captions = [rated_caption(c, s) for c, s in zip(captions, rows[score_column])]
        self.prompts = [prompt_template.format(caption=c) for c in captions]
        # Longer prompts are truncated at the tokenizer's limit (77 for CLIP), as the pipeline does.
        self.input_ids = tokenizer(
            self.prompts, max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt"
        ).input_ids  # (N, 77)
        self.transform = transforms.Compose([
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(resolution),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ])

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.rows[i][self.image_column].convert("RGB")
        return {"pixel_values": self.transform(image), "input_ids": self.input_ids[i]}


def lora_fingerprint(*, settings: LoraSettings, base_dir: str | os.PathLike, data_files: list[str], extra: dict | None = None) -> str:
    """Hash of the LoRA settings, every file of the base model and the training data files.

    Used to decide whether a checkpoint may be resumed: any change in config, base weights
    or data starts training afresh.
    """
    h = hashlib.sha256(json.dumps({"settings": settings.__dict__, "extra": extra or {}}, sort_keys=True, default=str).encode())
    base = Path(base_dir)
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(base)).encode())
        h.update(sha256_file(path).encode())
    for name in sorted(data_files):
        h.update(sha256_file(name).encode())
    return h.hexdigest()


def train_lora(
    *,
    base_dir: str | os.PathLike,
    dataset: Any,
    settings: LoraSettings,
    out_dir: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    fingerprint: str,
    accelerator: Accelerator | None = None,
    on_log: Callable[[int, dict[str, Any]], None] | None = None,
    stop_after: int | None = None,
    image_column: str = "image_sd",
    caption_column: str = "caption",
    score_column: str = "score",
) -> LoraResult:
    """Train a LoRA adapter on the UNet of the pipeline in `base_dir` and save only the adapter.

    `dataset`: a `datasets.Dataset` (or a DatasetDict, whose "train" split is used) with an image
    column and a caption column. Writes `out_dir/pytorch_lora_weights.safetensors` atomically
    (the folder is replaced) on the main process, and nothing if training fails (e.g. the loss
    turns NaN → UserError naming the step). Checkpoints go to `checkpoint_dir`; the caller
    deletes it after success. GPU if available (accelerate picks the device).
    """
    if hasattr(dataset, "keys") and "train" in dataset:
        dataset = dataset["train"]
    accelerator = accelerator or make_accelerator(settings.loop_settings())
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    base_dir = str(check_pipeline_folder(base_dir))
    tokenizer = CLIPTokenizer.from_pretrained(base_dir, subfolder="tokenizer")
    noise_scheduler = DDPMScheduler.from_pretrained(base_dir, subfolder="scheduler")
    text_encoder = CLIPTextModel.from_pretrained(base_dir, subfolder="text_encoder", dtype=weight_dtype)
    vae = AutoencoderKL.from_pretrained(base_dir, subfolder="vae", dtype=weight_dtype)
    unet = UNet2DConditionModel.from_pretrained(base_dir, subfolder="unet", dtype=weight_dtype)
    for frozen in (unet, vae, text_encoder):
        frozen.requires_grad_(False)
    vae.to(accelerator.device).eval()
    text_encoder.to(accelerator.device).eval()

    seed_everything(settings.seed)  # the gaussian LoRA init draws from torch's RNG
    unet.add_adapter(LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, init_lora_weights="gaussian",
        target_modules=list(settings.target_modules),
    ))
    cast_training_params(unet, dtype=torch.float32)  # trainable LoRA weights in fp32 even under fp16/bf16
    if settings.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    total = sum(p.numel() for p in unet.parameters())

    examples = CaptionedImages(dataset, tokenizer, resolution=settings.resolution, prompt_template=settings.prompt_template,
                               image_column=image_column, caption_column=caption_column,
                               score_column=score_column if settings.rating_in_caption and score_column in dataset.column_names else None)
    loss_fn = _make_loss(vae=vae, text_encoder=text_encoder, noise_scheduler=noise_scheduler,
                         weight_dtype=weight_dtype, min_snr_gamma=settings.min_snr_gamma)
    result = train(
        model=unet, loss_fn=loss_fn, dataset=examples, settings=settings.loop_settings(),
        checkpoint_dir=Path(checkpoint_dir), fingerprint=fingerprint, accelerator=accelerator,
        on_log=on_log, stop_after=stop_after, desc="lora",
    )
    adapter_path = None
    if accelerator.is_main_process and (stop_after is None or stop_after >= settings.max_steps):
        adapter_path = save_adapter(result.model, out_dir)
    accelerator.wait_for_everyone()
    return LoraResult(adapter_path=adapter_path, trainable_params=trainable, total_params=total, train=result)


def estimate_training_bytes(base_dir: str | os.PathLike, settings: LoraSettings, device: str | torch.device) -> int:
    """What `train_lora` will hold at its worst, estimated in about a second without loading a weight.

    Frozen weights at the training dtype (UNet, VAE, CLIP: element counts from the configs), the
    LoRA weights with their fp32 gradients and AdamW moments, and the activations autograd keeps
    per sample (the UNet run on the meta device at `settings.resolution`) times the batch. With
    gradient checkpointing the activations are mostly recomputed, so they count a quarter.
    """
    from squeezegen.memory.fit import activation_bytes_per_sample

    base = Path(base_dir)
    half = torch.device(device).type == "cuda" and settings.mixed_precision in ("fp16", "bf16")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(base, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(base, subfolder="vae"))
        text_encoder = CLIPTextModel(CLIPTextModel.config_class.from_pretrained(base, subfolder="text_encoder"))
    frozen = sum(p.numel() for m in (unet, vae, text_encoder) for p in m.parameters())
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=list(settings.target_modules)))
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    latent = settings.resolution // 8
    width = text_encoder.config.hidden_size

    def forward(batch: int) -> None:
        unet(torch.empty(batch, unet.config.in_channels, latent, latent, device="meta"),
             torch.zeros(batch, dtype=torch.long, device="meta"), torch.empty(batch, 77, width, device="meta"))

    per_sample = activation_bytes_per_sample(forward) * (0.5 if half else 1.0)  # meta runs in fp32
    if settings.gradient_checkpointing:
        per_sample /= 4
    return int(frozen * (2 if half else 4) + trainable * 16 + per_sample * settings.batch_size)


def save_adapter(unet: UNet2DConditionModel, out_dir: str | os.PathLike) -> Path:
    """Write only the LoRA weights, diffusers-format, to `out_dir/pytorch_lora_weights.safetensors` atomically."""
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    with atomic_path(out_dir) as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=layers, safe_serialization=True)
    return Path(out_dir) / ADAPTER_FILE


def denoising_loss(unet: torch.nn.Module, latents: torch.Tensor, text_states: torch.Tensor, noise_scheduler: DDPMScheduler,
                   *, min_snr_gamma: float | None = None) -> tuple[torch.Tensor, dict]:
    """SD's training objective on scaled latents (B, 4, h, w): noise them at uniform random
    timesteps and regress the scheduler's target (epsilon or v), optionally min-SNR-γ weighted."""
    prediction_type = noise_scheduler.config.prediction_type
    noise = torch.randn_like(latents)  # (B, 4, h, w)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
    ).long()  # (B,)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)  # (B, 4, h, w)
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r} in the base model's scheduler")
    pred = unet(noisy, timesteps, text_states, return_dict=False)[0]  # (B, 4, h, w)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))  # (B,)
    if min_snr_gamma is None:
        return per_sample.mean(), {}
    snr = compute_snr(noise_scheduler, timesteps)  # (B,)
    weights = torch.clamp(snr, max=min_snr_gamma)
    weights = weights / snr if prediction_type == "epsilon" else weights / (snr + 1)
    return (per_sample * weights).mean(), {"plain_mse": per_sample.mean()}


def _make_loss(*, vae: AutoencoderKL, text_encoder: CLIPTextModel, noise_scheduler: DDPMScheduler,
               weight_dtype: torch.dtype, min_snr_gamma: float | None) -> Callable:
    """The denoising loss of one micro-batch of (pixels, token ids), for `squeezegen.training.train`."""

    def loss_fn(unet: torch.nn.Module, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            pixels = batch["pixel_values"].to(weight_dtype)  # (B, 3, H, W) in [-1, 1]
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor  # (B, 4, H/8, W/8)
            text_states = text_encoder(batch["input_ids"], return_dict=False)[0]  # (B, 77, D)
        return denoising_loss(unet, latents, text_states, noise_scheduler, min_snr_gamma=min_snr_gamma)

    return loss_fn
