"""Quantize a (LoRA-fused) pipeline into the files the compressed configurations load.

`quantize_pipeline` writes one folder, atomically: `unet.gguf` (the UNet under a tensor policy),
`text_encoder/` (8-bit, bitsandbytes) and `manifest.json` (what each file holds).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from squeezegen.device import default_device
from squeezegen.sd.configurations import GGUF_NAME, TEXT_ENCODER_DIR, fused_unet_state_dict


def quantize_pipeline(
    base_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    policy: Any,
    lora_dir: str | os.PathLike | None = None,
    text_encoder_8bit: bool = True,
    metadata: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    key_format: str = "ldm",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write `out_dir/` = unet.gguf (LoRA fused, `policy`, tensor names per `key_format`: "ldm" or
    "diffusers") + text_encoder/ (8-bit, or an fp16 copy when `text_encoder_8bit` is false) +
    manifest.json, atomically as one folder.

    `device` is where bitsandbytes quantizes the text encoder (default: cuda if available).
    Returns (metrics, manifest): metrics are the flat numbers of `metrics/quantize.json`.
    """
    from transformers import CLIPTextModel

    from squeezegen.files import atomic_path, atomic_write_json
    from squeezegen.memory.accounting import module_bytes
    from squeezegen.quant.gguf.io import write_unet_gguf
    from squeezegen.quant.int8 import quantize_text_encoder_int8

    base_dir = Path(base_dir)
    device = torch.device(device) if device is not None else default_device()
    start = time.perf_counter()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        state = fused_unet_state_dict(base_dir, lora_dir)
        report = write_unet_gguf(
            tmp / GGUF_NAME, state, policy=policy, metadata=metadata or {}, key_format=key_format, progress=progress
        )
        del state
        unet_seconds = time.perf_counter() - start

        fp16_te = CLIPTextModel.from_pretrained(base_dir, subfolder="text_encoder", dtype=torch.float16)
        te_fp16_bytes = module_bytes(fp16_te)["bytes"]
        te_int8_bytes = None
        if text_encoder_8bit:
            int8_te = quantize_text_encoder_int8(fp16_te, tmp / TEXT_ENCODER_DIR, device=str(device))
            te_int8_bytes = module_bytes(int8_te)["bytes"]
            del int8_te
        else:
            fp16_te.save_pretrained(tmp / TEXT_ENCODER_DIR)
        del fp16_te

        totals = report.metrics()
        metrics = {
            "unet_bytes_fp16": report.bytes_fp16,
            "unet_bytes_gguf": report.bytes_gguf,
            "unet_compression_ratio": totals["compression_ratio"],
            "unet_bpw": report.bpw,
            "q4k_fraction": report.q4k_fraction,
            "rel_rmse_mean": report.rel_rmse_mean,
            "rel_rmse_max": report.rel_rmse_max,
            "unet_tensors_by_type": totals["by_type"],
            "unet_quantize_seconds": unet_seconds,
            "quantize_seconds": time.perf_counter() - start,
            "text_encoder_8bit": text_encoder_8bit,
            "text_encoder_bytes_fp16": te_fp16_bytes,
            "text_encoder_bytes_int8": te_int8_bytes,
        }
        manifest = report.manifest()
        manifest["text_encoder"] = {
            "format": "bitsandbytes-int8" if text_encoder_8bit else "fp16",
            "bytes_fp16": te_fp16_bytes,
            "bytes_resident": te_int8_bytes if text_encoder_8bit else te_fp16_bytes,
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    return metrics, manifest
