"""diffusers ↔ original (LDM / CompVis) tensor names for the SD UNet and VAE, from one table each.

Every SD tool outside diffusers (ComfyUI, stable-diffusion.cpp, A1111) reads the original names
(`input_blocks.*`, `middle_block.*`, `output_blocks.*`, `time_embed.*`, `out.*` for the UNet;
`encoder.down.*`, `mid.attn_1.*` … for the VAE), so our files use them by default.

Each model's table is a list of (diffusers module, LDM module) pairs built from the model's
layout (number of blocks, resnets per block, which blocks have attention). A name maps by its
longest module prefix found in the table; the other direction uses the same pairs swapped, so
the two directions cannot drift apart. The layout is read from the names themselves (either
format), so no config is needed to map a file's names. Names no pair covers are an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from squeezegen.errors import UserError

LDM_UNET_PREFIX = "model.diffusion_model."  # the UNet's prefix in an LDM checkpoint (diffusers needs it)
LDM_VAE_PREFIX = "first_stage_model."
KEY_FORMATS = ("ldm", "diffusers")

# ResBlock children: diffusers name → LDM name (LDM wraps norm/act/conv in Sequentials).
_UNET_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))  # fmt: skip
_VAE_RESNET = (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"),
               ("conv_shortcut", "nin_shortcut"))  # fmt: skip
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def _indices(keys: Iterable[str], pattern: str) -> set[int]:
    regex = re.compile(pattern)
    return {int(m.group(1)) for key in keys if (m := regex.match(key))}


def _has(keys: Iterable[str], prefix: str) -> bool:
    return any(key.startswith(prefix) for key in keys)


@dataclass(frozen=True)
class UNetLayout:
    """What the name table depends on: blocks, resnets per down block, where attention sits."""

    n_blocks: int
    layers_per_block: int
    down_attention: tuple[bool, ...]
    up_attention: tuple[bool, ...]
    mid_attention: bool

    @classmethod
    def from_diffusers(cls, keys: Iterable[str]) -> "UNetLayout":
        keys = list(keys)
        blocks = _indices(keys, r"down_blocks\.(\d+)\.")
        layers = _indices(keys, r"down_blocks\.\d+\.resnets\.(\d+)\.")
        if not blocks or not layers:
            raise UserError("these are not diffusers UNet names: no down_blocks.<i>.resnets.<j>.* among them")
        n = max(blocks) + 1
        return cls(
            n_blocks=n,
            layers_per_block=max(layers) + 1,
            down_attention=tuple(_has(keys, f"down_blocks.{i}.attentions.") for i in range(n)),
            up_attention=tuple(_has(keys, f"up_blocks.{i}.attentions.") for i in range(n)),
            mid_attention=_has(keys, "mid_block.attentions."),
        )

    @classmethod
    def from_ldm(cls, keys: Iterable[str]) -> "UNetLayout":
        keys = list(keys)
        outputs = _indices(keys, r"output_blocks\.(\d+)\.")
        if not outputs:
            raise UserError("these are not LDM UNet names: no output_blocks.<k>.* among them")
        # The first downsampler sits right after the first block's resnets; with one block there is none.
        ops = _indices(keys, r"input_blocks\.(\d+)\.0\.op\.")
        per_block = min(ops) if ops else max(outputs) + 1  # resnets per up block = layers_per_block + 1
        n = (max(outputs) + 1) // per_block
        # output_blocks.<k>.1 is an attention unless it is the upsampler (a direct `.conv` child)
        first = [f"output_blocks.{i * per_block}.1." for i in range(n)]
        up_attention = tuple(any(k.startswith(p) and not k.startswith(p + "conv.") for k in keys) for p in first)
        return cls(
            n_blocks=n,
            layers_per_block=per_block - 1,
            down_attention=tuple(_has(keys, f"input_blocks.{1 + i * per_block}.1.") for i in range(n)),
            up_attention=up_attention,
            mid_attention=_has(keys, "middle_block.1.") and not _has(keys, "middle_block.1.in_layers."),
        )

    def module_pairs(self) -> list[tuple[str, str]]:
        """(diffusers module, LDM module) for every module whose name differs between the formats."""
        n, per = self.layers_per_block, self.layers_per_block + 1
        pairs = [("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2"),
                 ("class_embedding.linear_1", "label_emb.0.0"), ("class_embedding.linear_2", "label_emb.0.2"),
                 ("conv_in", "input_blocks.0.0"), ("conv_norm_out", "out.0"), ("conv_out", "out.2")]  # fmt: skip
        resnets: list[tuple[str, str]] = []
        for i in range(self.n_blocks):
            for j in range(n):
                k = 1 + i * per + j
                resnets.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{k}.0"))
                if self.down_attention[i]:
                    pairs.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{k}.1"))
            if i < self.n_blocks - 1:
                pairs.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{(i + 1) * per}.0.op"))
            for j in range(per):
                k = i * per + j
                resnets.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{k}.0"))
                if self.up_attention[i]:
                    pairs.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{k}.1"))
            if i < self.n_blocks - 1:
                slot = 2 if self.up_attention[i] else 1
                pairs.append((f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{i * per + n}.{slot}.conv"))
        resnets.append(("mid_block.resnets.0", "middle_block.0"))
        if self.mid_attention:
            pairs.append(("mid_block.attentions.0", "middle_block.1"))
        resnets.append(("mid_block.resnets.1", "middle_block.2" if self.mid_attention else "middle_block.1"))
        pairs += [(f"{d}.{dp}", f"{l}.{lp}") for d, l in resnets for dp, lp in _UNET_RESNET]
        return pairs


def _vae_module_pairs(n_blocks: int) -> list[tuple[str, str]]:
    """(diffusers module, LDM module) pairs of an AutoencoderKL with `n_blocks` blocks each way."""
    pairs = [("encoder.conv_norm_out", "encoder.norm_out"), ("decoder.conv_norm_out", "decoder.norm_out")]
    resnets: list[tuple[str, str]] = []
    for side in ("encoder", "decoder"):
        resnets += [(f"{side}.mid_block.resnets.{j}", f"{side}.mid.block_{j + 1}") for j in range(2)]
        pairs += [(f"{side}.mid_block.attentions.0.{d}", f"{side}.mid.attn_1.{l}") for d, l in _VAE_ATTENTION]
    for i in range(n_blocks):
        up = n_blocks - 1 - i  # the LDM decoder counts its up blocks from the bottom
        resnets += [(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}") for j in range(8)]
        resnets += [(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{up}.block.{j}") for j in range(8)]
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0", f"encoder.down.{i}.downsample"))
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0", f"decoder.up.{up}.upsample"))
    pairs += [(f"{d}.{dp}", f"{l}.{lp}") for d, l in resnets for dp, lp in _VAE_RESNET]
    return pairs


def _rename(keys: list[str], table: dict[str, str], what: str) -> dict[str, str]:
    """Each key → its name under `table` (longest module prefix wins; the rest of the name is kept)."""
    mapping, unmapped = {}, []
    for key in keys:
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module = ".".join(parts[:cut])
            if module in table:
                mapping[key] = table[module] + key[len(module) :]
                break
        else:
            unmapped.append(key)
    if unmapped:
        shown = ", ".join(repr(k) for k in unmapped[:5])
        raise UserError(f"{len(unmapped)} {what} names have no counterpart in the other format: {shown}. "
                        "Only SD 1.x/2.x-style UNets and AutoencoderKL VAEs can be renamed.")  # fmt: skip
    if len(set(mapping.values())) != len(mapping):
        raise RuntimeError(f"two {what} names map to one: the name table is wrong")
    return mapping


def unet_diffusers_to_ldm(keys: Iterable[str]) -> dict[str, str]:
    """diffusers UNet state-dict key → LDM key (without the `model.diffusion_model.` prefix)."""
    keys = list(keys)
    return _rename(keys, dict(UNetLayout.from_diffusers(keys).module_pairs()), "UNet")


def unet_ldm_to_diffusers(keys: Iterable[str]) -> dict[str, str]:
    """LDM UNet key (with or without `model.diffusion_model.`) → diffusers state-dict key."""
    keys = list(keys)
    bare = [k.removeprefix(LDM_UNET_PREFIX) for k in keys]
    table = {ldm: diffusers for diffusers, ldm in UNetLayout.from_ldm(bare).module_pairs()}
    mapping = _rename(bare, table, "UNet")
    return {key: mapping[b] for key, b in zip(keys, bare)}


def is_ldm_unet(keys: Iterable[str]) -> bool:
    """Whether UNet tensor names are LDM's (`input_blocks.*`, possibly prefixed) rather than diffusers'."""
    return any(k.removeprefix(LDM_UNET_PREFIX).startswith(("input_blocks.", "output_blocks.")) for k in keys)


def vae_diffusers_to_ldm(keys: Iterable[str]) -> dict[str, str]:
    """diffusers AutoencoderKL key → LDM VAE key (without `first_stage_model.`)."""
    keys = list(keys)
    blocks = _indices(keys, r"encoder\.down_blocks\.(\d+)\.")
    table = dict(_vae_module_pairs(max(blocks, default=-1) + 1))
    table |= {m: m for m in ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out",
                             "quant_conv", "post_quant_conv")}  # fmt: skip
    return _rename(keys, table, "VAE")


def vae_ldm_to_diffusers(keys: Iterable[str]) -> dict[str, str]:
    """LDM VAE key (without `first_stage_model.`) → diffusers AutoencoderKL key."""
    keys = list(keys)
    blocks = _indices(keys, r"encoder\.down\.(\d+)\.")
    table = {ldm: d for d, ldm in _vae_module_pairs(max(blocks, default=-1) + 1)}
    table |= {m: m for m in ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out",
                             "quant_conv", "post_quant_conv")}  # fmt: skip
    return _rename(keys, table, "VAE")
