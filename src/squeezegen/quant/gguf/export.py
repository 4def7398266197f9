"""One-file exports of the (LoRA-fused) pipeline for tools outside squeezegen.

- `sdcpp`: one GGUF with UNet + CLIP text encoder + VAE under stable-diffusion.cpp's names (the
  original LDM checkpoint's: `model.diffusion_model.*`, `cond_stage_model.transformer.*`,
  `first_stage_model.*`), every tensor in its true shape. sd.cpp never reads
  `comfy.gguf.orig_shape`, and its Conv2d weights are F16 at run time whatever the file holds
  (ggml's im2col takes F16/F32 kernels only), so convs are F16 here. Linear weights are Q4_K
  (from our quantizer) when their input width is a multiple of 256, else Q8_0 (multiple of
  32), else F16: sd.cpp keeps a Linear in the file's type only when its rows are whole blocks
  (ggml_extend.hpp `Linear::init_params`), otherwise it decodes it to F32. Embeddings, time /
  label embeddings, norms and biases stay F16, as sd.cpp's own quantizer leaves them
  (`tensor_should_be_converted` in model.cpp).
- `comfy`: ComfyUI-GGUF's `UnetLoaderGGUF` reads the quantize stage's `unet.gguf` as it is (LDM
  names behind `model.diffusion_model.`, which it strips; reshaped Q4_K convs restored from
  `comfy.gguf.orig_shape.*` and decoded on the fly), so the export is a checked copy.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from gguf.constants import GGMLQuantizationType as T

import squeezegen
from squeezegen.errors import UserError
from squeezegen.files import atomic_path
from squeezegen.quant.gguf.io import ARCHITECTURE, read_gguf, write_planned_gguf
from squeezegen.quant.gguf.ldm_names import LDM_UNET_PREFIX, LDM_VAE_PREFIX, unet_diffusers_to_ldm, vae_diffusers_to_ldm
from squeezegen.quant.mix.policy import TensorPlan, block_size

FORMATS = ("sdcpp", "comfy")
TEXT_PREFIX = "cond_stage_model.transformer."  # SD 1.x checkpoints: the HF CLIPTextModel's own keys follow
_NEVER_QUANTIZED = ("embedding", "time_embed.", "label_emb.")  # sd.cpp keeps these (substrings of the name)
_SKIPPED = ("position_ids",)  # buffers sd.cpp lists as unused tensors
_VAE_ATTENTION_LINEARS = (".q.weight", ".k.weight", ".v.weight", ".proj_out.weight")


def sdcpp_tensor_shapes(
    unet: Mapping[str, Any], text_encoder: Mapping[str, Any], vae: Mapping[str, Any]
) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """sd.cpp name → (component, diffusers/HF key, shape in the original checkpoint).

    Takes state dicts (or anything with `.shape` values, e.g. meta tensors). The VAE's attention
    projections are nn.Linear in diffusers but 1×1 convs in the original checkpoint.
    """
    names: dict[str, tuple[str, str, tuple[int, ...]]] = {}
    for key, ldm in unet_diffusers_to_ldm(unet).items():
        names[LDM_UNET_PREFIX + ldm] = ("unet", key, tuple(unet[key].shape))
    for key, tensor in text_encoder.items():
        if not key.endswith(_SKIPPED):  # transformers 5 dropped the `text_model.` level checkpoints keep
            name = TEXT_PREFIX + "text_model." + key.removeprefix("text_model.")
            names[name] = ("text_encoder", key, tuple(tensor.shape))
    for key, ldm in vae_diffusers_to_ldm(vae).items():
        shape = tuple(vae[key].shape)
        if ".mid.attn_1." in ldm and ldm.endswith(_VAE_ATTENTION_LINEARS) and len(shape) == 2:
            shape = (*shape, 1, 1)  # [out, in] → [out, in, 1, 1]
        names[LDM_VAE_PREFIX + ldm] = ("vae", key, shape)
    return names


def sdcpp_plan(name: str, shape: tuple[int, ...]) -> TensorPlan:
    """The type of tensor `name` (sd.cpp name, true shape) in the sdcpp export; never reshaped."""
    if len(shape) != 2:
        return TensorPlan(name, T.F16, shape, None, "F16: not a Linear weight (conv, norm, bias)")
    if any(part in name for part in _NEVER_QUANTIZED):
        return TensorPlan(name, T.F16, shape, None, "F16: an embedding sd.cpp never quantizes")
    for qtype in (T.Q4_K, T.Q8_0):
        if shape[1] % block_size(qtype) == 0:
            return TensorPlan(name, qtype, shape, None, f"{qtype.name}: in_features {shape[1]}")
    return TensorPlan(name, T.F16, shape, None, f"F16: in_features {shape[1]} is not a multiple of 32")


def export_sdcpp(
    out: str | os.PathLike,
    *,
    base_dir: str | os.PathLike,
    lora_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the sdcpp export of `base_dir` (a diffusers SD folder) with `lora_dir` fused in.

    Returns a summary: file bytes, tensors, parameters and bytes by type.
    """
    from squeezegen.sd.configurations import load_fused_pipeline

    if not Path(base_dir).is_dir():
        raise UserError(f"{base_dir}: base pipeline folder not found; run `dvc repro fetch_base` first")
    if lora_dir is not None and not Path(lora_dir).is_dir():
        raise UserError(
            f"{lora_dir}: LoRA folder not found; run `dvc repro finetune_lora` first, or export without it (--no-lora)"
        )
    pipe = load_fused_pipeline(base_dir, lora_dir)
    states = {part: getattr(pipe, part).state_dict() for part in ("unet", "text_encoder", "vae")}
    del pipe
    names = sdcpp_tensor_shapes(states["unet"], states["text_encoder"], states["vae"])
    plans = [sdcpp_plan(name, shape) for name, (_, _, shape) in names.items()]
    tensors = {name: states[part][key].reshape(shape) for name, (part, key, shape) in names.items()}
    metadata = {
        "squeezegen.version": squeezegen.__version__,
        "squeezegen.export_format": "sdcpp",
        "squeezegen.key_format": "ldm",
        "squeezegen.lora_fused": lora_dir is not None,
    }
    records, file_bytes = write_planned_gguf(
        out, plans, tensors, metadata, architecture=ARCHITECTURE, progress=progress, desc="export sd.cpp"
    )
    by_type: dict[str, dict[str, int]] = {}
    for record in records:
        entry = by_type.setdefault(record.qtype, {"tensors": 0, "params": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["params"] += record.n_params
        entry["bytes"] += record.bytes
    return {
        "format": "sdcpp",
        "path": str(out),
        "file_bytes": file_bytes,
        "n_tensors": len(records),
        "n_params": sum(r.n_params for r in records),
        "bytes_by_component": {
            part: sum(r.bytes for r in records if names[r.name][0] == part) for part in states
        },
        "by_type": dict(sorted(by_type.items())),
        "lora_fused": lora_dir is not None,
    }


def export_comfy(out: str | os.PathLike, *, quant_dir: str | os.PathLike) -> dict[str, Any]:
    """Copy the quantize stage's UNet (checked, LDM names) to `out` for ComfyUI-GGUF's UnetLoaderGGUF."""
    source = Path(quant_dir) / "unet.gguf"
    if not source.is_file():
        raise UserError(f"{source}: quantized UNet not found; run `dvc repro quantize` first")
    tensors, metadata = read_gguf(source)  # as strict as ggml: a corrupt file is not passed on
    if metadata.get("squeezegen.key_format") != "ldm":
        raise UserError(
            f"{source} has {metadata.get('squeezegen.key_format')!r} tensor names; ComfyUI detects a UNet of any "
            "size only from LDM names. Set `quantize.key_format: ldm` in params.yaml and run `dvc repro quantize`."
        )
    out = Path(out)
    with atomic_path(out) as tmp:
        shutil.copyfile(source, tmp)
    return {
        "format": "comfy",
        "path": str(out),
        "file_bytes": out.stat().st_size,
        "n_tensors": len(tensors),
        "n_params": sum(math.prod(t.shape) for t in tensors.values()),
        "source": str(source),
    }
