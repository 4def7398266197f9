"""The activation-memory options of the `lean` configuration, each usable on a plain diffusers pipeline.

- `enable_serial_cfg(unet)`: classifier-free guidance as two UNet passes of batch 1 instead of one
  of batch 2 (diffusers concatenates [uncond, cond]); halves the UNet's activations, same math.
- `set_attention(pipe, "sdpa" | "sliced")`: PyTorch's `scaled_dot_product_attention` (flash /
  memory-efficient kernels; diffusers' default `AttnProcessor2_0`) or diffusers' attention slicing.
  `attention_processors` and `record_sdpa_backends` report which path actually ran.
- `enable_tiled_decode(vae, tile_px)`: diffusers' AutoencoderKL tiling with the tile side a knob
  (diffusers ties it to `sample_size`, 512 px for SD 1.5, so a 512 px image is never tiled).
- `build_tiny_vae(source)`: diffusers' AutoencoderTiny (TAESD) from the hub / a folder, or built from
  its default config with seeded random weights where nothing may be downloaded.
"""

from __future__ import annotations

import collections
import contextlib
import functools
from typing import Any, Iterator

import torch

from squeezegen.errors import UserError

ATTENTION = ("sdpa", "sliced")
TINY_VAE_FROM_CONFIG = "config"


def enable_serial_cfg(unet: torch.nn.Module, chunk: int = 1) -> torch.nn.Module:
    """Run the UNet on batches larger than `chunk` as several calls of `chunk` samples, concatenated.

    Every tensor argument whose first dimension is the batch is split; the rest (a scalar timestep,
    flags) is passed as is. Returns `unet`, whose `forward` is wrapped in place.
    """
    forward = unet.forward

    @functools.wraps(forward)
    def chunked(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        n = sample.shape[0]
        if n <= chunk:
            return forward(sample, *args, **kwargs)

        def pick(x: Any, part: slice) -> Any:
            if isinstance(x, torch.Tensor) and x.ndim and x.shape[0] == n:
                return x[part]
            if isinstance(x, dict):
                return {k: pick(v, part) for k, v in x.items()}
            return x

        outs = []
        for i in range(0, n, chunk):
            part = slice(i, i + chunk)
            out = forward(pick(sample, part), *(pick(a, part) for a in args), **{k: pick(v, part) for k, v in kwargs.items()})
            outs.append(out[0] if isinstance(out, tuple) else out.sample)
        merged = torch.cat(outs)  # (n, C, h, w)
        if kwargs.get("return_dict", True):
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=merged)
        return (merged,)

    unet.forward = chunked
    return unet


def set_attention(pipe: Any, mode: str) -> None:
    """`sdpa`: diffusers' default processors (torch's fused attention kernels); `sliced`:
    `pipe.enable_attention_slicing()` (diffusers' own "auto" slice size)."""
    if mode not in ATTENTION:
        raise UserError(f"attention {mode!r}: choose one of {', '.join(ATTENTION)}")
    if mode == "sliced":
        pipe.enable_attention_slicing()
    else:
        from diffusers.models.attention_processor import AttnProcessor2_0

        pipe.unet.set_attn_processor(AttnProcessor2_0())


def attention_processors(pipe: Any) -> dict[str, dict[str, int]]:
    """Per component with attention (unet, vae): how many layers use each processor class."""
    out = {}
    for name in ("unet", "vae"):
        model = getattr(pipe, name, None)
        processors = getattr(model, "attn_processors", None) if model is not None else None
        if processors:
            out[name] = dict(collections.Counter(type(p).__name__ for p in processors.values()))
    return out


@contextlib.contextmanager
def record_sdpa_backends() -> Iterator[collections.Counter]:
    """Count, per call of `F.scaled_dot_product_attention` inside the block, the kernel PyTorch's
    dispatcher picks for those exact inputs (`torch._fused_sdp_choice`: FLASH_ATTENTION,
    EFFICIENT_ATTENTION, CUDNN_ATTENTION, MATH, ...). Sliced attention never calls it."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend

    real = F.scaled_dot_product_attention
    counts: collections.Counter = collections.Counter()

    def counted(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None,
                dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None, **kw: Any) -> torch.Tensor:
        try:
            choice = torch._fused_sdp_choice(query, key, value, attn_mask, dropout_p, is_causal, scale=scale)
            counts[SDPBackend(choice).name] += 1
        except Exception as err:  # a private API: never let the report break the run
            counts[f"unknown ({type(err).__name__})"] += 1
        return real(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw)

    F.scaled_dot_product_attention = counted
    try:
        yield counts
    finally:
        F.scaled_dot_product_attention = real


def enable_tiled_decode(vae: Any, tile_px: int) -> None:
    """diffusers' AutoencoderKL tiling with tiles of `tile_px` image pixels (overlap: diffusers' 25%)."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    # diffusers steps tiles by int(0.75 · latent tile) and crops each to int(0.75 · tile_px) pixels;
    # the two agree (and the image keeps its size) only when the latent tile is a multiple of 4.
    if tile_px <= 0 or tile_px % (4 * factor):
        raise UserError(f"vae_tile_px {tile_px}: must be a positive multiple of {4 * factor} (4 latent pixels of "
                        f"this {factor}× VAE), or diffusers' tiled decode returns an image of the wrong size")
    vae.enable_tiling()
    vae.tile_sample_min_size = tile_px
    vae.tile_latent_min_size = tile_px // factor


def build_tiny_vae(source: str = TINY_VAE_FROM_CONFIG, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """AutoencoderTiny: `config` = TAESD's architecture (diffusers' default config) with random
    weights drawn from `seed`; else a hub id (e.g. `madebyollin/taesd`) or a local folder."""
    from diffusers import AutoencoderTiny

    if source == TINY_VAE_FROM_CONFIG:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderTiny()
        return vae.to(dtype).eval()
    try:
        return AutoencoderTiny.from_pretrained(source, dtype=dtype).eval()
    except (OSError, ValueError) as err:
        raise UserError(f"tiny VAE {source!r} could not be loaded ({err}); set benchmark.tiny_vae to a folder, "
                        f"a reachable hub id, or `{TINY_VAE_FROM_CONFIG}`") from err
