"""quantize: fuse the LoRA into the base UNet, write it as GGUF (Q4_K policy), and the 8-bit CLIP.

models/base + models/lora → models/quantized/ (unet.gguf, text_encoder/, manifest.json, written
as one folder atomically) and metrics/quantize.json.
"""

from __future__ import annotations

from pathlib import Path

import squeezegen
from squeezegen.config import QuantizeConfig, load_config
from squeezegen.errors import UserError
from squeezegen.tracking import stage_run

BASE_DIR = Path("models/base")
LORA_DIR = Path("models/lora")
LORA_FILE = LORA_DIR / "pytorch_lora_weights.safetensors"
QUANT_DIR = Path("models/quantized")


def quant_policy(q: QuantizeConfig):
    """The GGUF tensor policy from the `quantize:` section."""
    from squeezegen.quant.policy import QuantPolicy

    return QuantPolicy(
        unet_type=q.unet_type,
        fallback_type=q.fallback_type,
        keep_type=q.keep_type,
        keep_patterns=q.keep_patterns,
        min_elements=q.min_elements,
        reshape_convs=q.reshape_convs,
    )


def main(params: str = "params.yaml", profile: str | None = None) -> dict:
    from squeezegen.files import sha256_file
    from squeezegen.sd.compressed import quantize_pipeline

    cfg = load_config(params, profile=profile)
    if not BASE_DIR.is_dir():
        raise UserError(f"{BASE_DIR}: base pipeline not found; run `dvc repro fetch_base` first")
    if not LORA_FILE.is_file():
        raise UserError(f"{LORA_FILE}: LoRA weights not found; run `dvc repro finetune_lora` first")
    policy = quant_policy(cfg.quantize)
    with stage_run("quantize", cfg) as run:
        metrics, _ = quantize_pipeline(
            BASE_DIR,
            QUANT_DIR,
            policy=policy,
            lora_dir=LORA_DIR,
            text_encoder_8bit=cfg.quantize.text_encoder_8bit,
            key_format=cfg.quantize.key_format,
            metadata={
                "base_model": cfg.sd.base,
                "lora_sha256": sha256_file(LORA_FILE),
                "lora_fused": True,
                "squeezegen_version": squeezegen.__version__,
            },
        )
        run.write_metrics("quantize", metrics)
        run.log_artifact(QUANT_DIR / "manifest.json")
    return metrics
