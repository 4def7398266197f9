"""Load a squeezegen GGUF UNet into a diffusers UNet2DConditionModel with dequantizing layers."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from diffusers import UNet2DConditionModel
from torch import nn

from squeezegen.errors import UserError
from squeezegen.quant.gguf.io import GGUFTensor, read_gguf
from squeezegen.quant.gguf.layers import GGUFConv2d, GGUFLinear
from squeezegen.quant.gguf.ldm_names import is_ldm_unet, unet_ldm_to_diffusers

_SHOW = 5  # how many names of each problem an error message lists


def load_unet_config(config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A UNet2DConditionModel config from a dict, a UNet folder (config.json) or a pipeline folder (unet/)."""
    if isinstance(config, Mapping):
        return dict(config)
    folder = Path(config)
    for subfolder in (None, "unet"):
        candidate = folder if subfolder is None else folder / subfolder
        if (candidate / "config.json").is_file():
            return dict(UNet2DConditionModel.load_config(folder, subfolder=subfolder, local_files_only=True))
    raise UserError(f"No UNet config found: neither {folder}/config.json nor {folder}/unet/config.json exists.")


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")


def check_tensors_match(path: Path, tensors: Mapping[str, GGUFTensor], model: nn.Module) -> None:
    """One UserError listing missing keys, unexpected keys and shape mismatches, if any."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = sorted(
        f"{name} (file {tensors[name].shape}, model {expected[name]})"
        for name in set(expected) & set(tensors)
        if tuple(tensors[name].shape) != expected[name]
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_names(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} with the wrong shape: {_names(mismatched)}")
    if problems:
        raise UserError(
            f"{path} does not match the UNet config: " + "; ".join(problems) + ". Quantize the UNet again from "
            "the same base model, or pass the config the file was made from."
        )


def read_unet_tensors(path: str | os.PathLike) -> dict[str, GGUFTensor]:
    """The UNet tensors of a GGUF file by diffusers name, whichever names the file uses (LDM or diffusers)."""
    tensors, _ = read_gguf(path)
    if not is_ldm_unet(tensors):
        return tensors
    names = unet_ldm_to_diffusers(tensors)  # checked one-to-one
    return {names[name]: dataclasses.replace(t, name=names[name]) for name, t in tensors.items()}


def _to_torch(tensor: GGUFTensor) -> torch.Tensor:
    """A writable copy of the stored data (the reader's arrays are read-only views of the file)."""
    return torch.from_numpy(np.array(tensor.data))


def load_gguf_unet(
    path: str | os.PathLike,
    *,
    config: Mapping[str, Any] | str | os.PathLike,
    device: str | torch.device = "cpu",
    compute_dtype: torch.dtype = torch.float32,
) -> UNet2DConditionModel:
    """Build a UNet2DConditionModel from `config` whose weights come from the GGUF file at `path`.

    Quantized Linear/Conv2d weights stay packed on `device` inside GGUFLinear/GGUFConv2d and
    are decoded in each forward; every other tensor becomes an ordinary parameter in
    `compute_dtype`. The file's names may be LDM's (with or without `model.diffusion_model.`) or
    diffusers'. Raises UserError if the file's tensors do not match the model (missing,
    unexpected, wrong shape), listing the first few of each.
    """
    path = Path(path)
    unet_config = load_unet_config(config)
    tensors = read_unet_tensors(path)
    with init_empty_weights():
        model = UNet2DConditionModel.from_config(unet_config)
    check_tensors_match(path, tensors, model)

    # Swap layers first, so that the unquantized biases below land in the new modules.
    for name, tensor in tensors.items():
        if not tensor.quantized:
            continue
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        packed = _to_torch(tensor).to(device)  # uint8 [rows, bytes per row]
        if attr == "weight" and isinstance(module, nn.Conv2d):
            model.set_submodule(module_name, GGUFConv2d.from_conv(module, packed=packed, qtype=tensor.qtype))
        elif attr == "weight" and isinstance(module, nn.Linear):
            model.set_submodule(module_name, GGUFLinear.from_linear(module, packed=packed, qtype=tensor.qtype))
        else:  # a quantized tensor of another kind of layer: decode it once, here
            value = torch.from_numpy(tensor.dequantize())
            set_module_tensor_to_device(model, name, device, value=value, dtype=compute_dtype)

    for name, tensor in tensors.items():
        if not tensor.quantized:
            value = _to_torch(tensor).reshape(tensor.shape)
            set_module_tensor_to_device(model, name, device, value=value, dtype=compute_dtype)

    left_on_meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left_on_meta:  # non-persistent buffers the file cannot hold: a bug here, not a user error
        raise RuntimeError(f"tensors left uninitialized after loading {path}: {_names(left_on_meta)}")
    model.requires_grad_(False)
    return model.eval()
