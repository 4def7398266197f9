"""Pretrain the tiny SD pipeline on the toy train split, so the toy SD branch draws paintings.

Two runs of the shared loop (`squeezegen.training.train`), in the order Stable Diffusion itself
was made:

1. the AutoencoderKL: L1 reconstruction plus a small KL term on its latent distribution (SD's
   autoencoder objective without the GAN and LPIPS terms), on 8-bit train images in [-1, 1];
   its `scaling_factor` is then set to 1 / std of the train latents, as SD's 0.18215 was;
2. the UNet, from its random init, on those latents: the epsilon objective the pipeline's
   scheduler expects, captions through the frozen text encoder, and each caption replaced by the
   empty prompt with probability `caption_dropout`, so classifier-free guidance has an
   unconditional branch to push away from.

The text encoder stays as built (random, frozen): every caption still maps to its own fixed
embedding, which is all the UNet needs to learn a caption's look. The result is an ordinary
diffusers folder, so every later stage loads it unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from torch.utils.data import TensorDataset

from squeezegen.data.tensors import to_signed
from squeezegen.files import fingerprint, tensor_hash
from squeezegen.sd.lora import denoising_loss
from squeezegen.seed import seed_everything
from squeezegen.training import LoopSettings, TrainResult, train

NULL_PROMPT = ""  # what a dropped caption becomes, and what classifier-free guidance's negative branch encodes
ENCODE_BATCH = 256  # images per VAE encode when computing the UNet's training latents


@dataclass(frozen=True)
class PretrainSettings:
    """The knobs of both runs (cfg.pretrain, filled by the fetch_base stage)."""

    vae_steps: int
    vae_batch_size: int
    vae_lr: float
    kl_weight: float
    unet_steps: int
    unet_batch_size: int
    unet_lr: float
    caption_dropout: float
    warmup_steps: int
    checkpoint_every: int
    seed: int

    def loop(self, part: str) -> LoopSettings:
        steps, batch, lr = ((self.vae_steps, self.vae_batch_size, self.vae_lr) if part == "vae"
                            else (self.unet_steps, self.unet_batch_size, self.unet_lr))
        return LoopSettings(max_steps=steps, lr=lr, batch_size=batch, checkpoint_every=self.checkpoint_every,
                            seed=self.seed, lr_scheduler="cosine", warmup_steps=self.warmup_steps)


@dataclass
class PretrainResult:
    vae: TrainResult
    unet: TrainResult
    scaling_factor: float
    posterior_std: float  # the VAE posterior's mean std, in units of the latents' std (1 = noise as large as the signal)
    prompts: int  # distinct prompts in the training captions (the null prompt not counted)


def vae_loss(kl_weight: float) -> Callable:
    """loss_fn(vae, batch, step): L1 reconstruction of a posterior sample + kl_weight · KL(posterior ‖ N(0, I))."""

    def loss_fn(vae: torch.nn.Module, batch: Sequence[torch.Tensor], step: int) -> tuple[torch.Tensor, dict]:
        x = to_signed(batch[0])  # (B, 3, H, W) in [-1, 1]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample  # (B, 3, H, W)
        l1 = F.l1_loss(recon, x)
        kl = posterior.kl().mean() / x[0].numel()  # per pixel, so kl_weight does not depend on the resolution
        return l1 + kl_weight * kl, {"l1": l1.detach(), "kl": kl.detach()}

    return loss_fn


def unet_loss(text_states: torch.Tensor, null_index: int, caption_dropout: float, scheduler: DDPMScheduler) -> Callable:
    """loss_fn(unet, batch, step) on (latents, prompt index) batches: the denoising loss, each
    prompt swapped for the null prompt with probability `caption_dropout`."""

    on_device: dict[torch.device, torch.Tensor] = {}  # the prompt table, moved once to the training device

    def loss_fn(unet: torch.nn.Module, batch: Sequence[torch.Tensor], step: int) -> torch.Tensor:
        latents, index = batch  # (B, 4, h, w), (B,)
        if latents.device not in on_device:
            on_device[latents.device] = text_states.to(latents.device)
        dropped = torch.rand(index.shape, device=index.device) < caption_dropout
        states = on_device[latents.device][torch.where(dropped, null_index, index)]  # (B, 77, D)
        return denoising_loss(unet, latents, states, scheduler)

    return loss_fn


@torch.no_grad()
def encode_prompts(pipe: StableDiffusionPipeline, prompts: Sequence[str]) -> torch.Tensor:
    """The text encoder's last hidden states of each prompt, padded to 77 tokens: (P, 77, D)."""
    ids = pipe.tokenizer(list(prompts), max_length=pipe.tokenizer.model_max_length, padding="max_length",
                         truncation=True, return_tensors="pt").input_ids  # (P, 77)
    return pipe.text_encoder(ids, return_dict=False)[0]


@torch.no_grad()
def encode_latents(vae: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Posterior means of uint8 images (N, 3, H, W) → (N, 4, H/8, W/8), unscaled, and the posterior's
    mean standard deviation (how much noise `latent_dist.sample()` adds, as the LoRA's training does)."""
    vae.eval()
    means, stds = [], []
    for i in range(0, len(images), ENCODE_BATCH):
        dist = vae.encode(to_signed(images[i:i + ENCODE_BATCH])).latent_dist
        means.append(dist.mean)
        stds.append(dist.std.mean() * len(dist.std))
    return torch.cat(means), float(sum(stds) / len(images))


def pretrain_tiny(
    pipe: StableDiffusionPipeline,
    images: torch.Tensor,
    captions: Sequence[str],
    settings: PretrainSettings,
    *,
    checkpoint_dir: Path,
    on_log: Callable[[str, int, dict[str, Any]], None] | None = None,
) -> PretrainResult:
    """Train `pipe`'s VAE, then its UNet, in place on uint8 `images` (N, 3, H, W) and their captions.

    Resumes each run from its checkpoint under `checkpoint_dir/{vae,unet}` when the settings and
    data match; the same seed gives the same weights, byte for byte.
    """
    data_hash = tensor_hash(images)
    seed_everything(settings.seed)
    pipe.vae.train()
    vae_result = train(
        model=pipe.vae, loss_fn=vae_loss(settings.kl_weight), dataset=TensorDataset(images),
        settings=settings.loop("vae"), checkpoint_dir=checkpoint_dir / "vae",
        fingerprint=fingerprint(part="vae", settings=asdict(settings), data=data_hash),
        on_log=None if on_log is None else (lambda step, values: on_log("vae", step, values)), desc="pretrain vae",
    )
    pipe.vae = vae_result.model.eval().requires_grad_(False)

    latents, posterior_std = encode_latents(pipe.vae, images)  # (N, 4, h, w)
    scaling = float(1.0 / latents.std())
    pipe.vae.register_to_config(scaling_factor=scaling)
    prompts = sorted(set(captions))
    text_states = encode_prompts(pipe, [*prompts, NULL_PROMPT])  # (P + 1, 77, D)
    index = torch.tensor([prompts.index(c) for c in captions], dtype=torch.long)  # (N,)

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    pipe.unet.train()
    unet_result = train(
        model=pipe.unet, loss_fn=unet_loss(text_states, len(prompts), settings.caption_dropout, scheduler),
        dataset=TensorDataset(latents * scaling, index), settings=settings.loop("unet"),
        checkpoint_dir=checkpoint_dir / "unet",
        fingerprint=fingerprint(part="unet", settings=asdict(settings), data=data_hash, captions=captions,
                                vae=tensor_hash(*pipe.vae.state_dict().values())),
        on_log=None if on_log is None else (lambda step, values: on_log("unet", step, values)), desc="pretrain unet",
    )
    pipe.unet = unet_result.model.eval().requires_grad_(False)
    return PretrainResult(vae=vae_result, unet=unet_result, scaling_factor=scaling, posterior_std=posterior_std * scaling,
                          prompts=len(prompts))
