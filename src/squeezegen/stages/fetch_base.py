"""fetch_base: `sd.base` (`tiny`, a hub id or a local folder) → `models/base/` (a diffusers pipeline folder).

With `sd.base: tiny` (the toy profile) the pipeline is built offline from the seed and then
pretrained on the toy train split (`squeezegen.sd.pretrain`): its VAE, then its UNet. Writes
`metrics/base.json` (what was fetched or trained) and the two loss curves
`metrics/base_vae_loss.csv` and `metrics/base_unet_loss.csv` (DVC plots; headers only when the
base comes pretrained, as SD 1.5 does).
"""

from __future__ import annotations

from pathlib import Path

from squeezegen.config import load_config
from squeezegen.metrics_files import memory_perf_keys
from squeezegen.tracking import stage_run

BASE_DIR = Path("models/base")
PROCESSED_DIR = Path("data/processed")
CHECKPOINT_DIR = Path("checkpoints/fetch_base")
VAE_LOSS_CSV = Path("metrics/base_vae_loss.csv")
UNET_LOSS_CSV = Path("metrics/base_unet_loss.csv")
VAE_COLUMNS = ["step", "loss", "l1", "kl", "lr"]
UNET_COLUMNS = ["step", "loss", "lr"]


def main(params: str = "params.yaml", profile: str | None = None) -> dict:
    from squeezegen.device import default_device
    from squeezegen.files import folder_bytes
    from squeezegen.metrics_files import write_history_csv
    from squeezegen.sd.hub import fetch_base
    from squeezegen.training import cleanup_checkpoints

    cfg = load_config(params, profile=profile)
    with stage_run("fetch_base", cfg) as run:
        pipe, pretrain = _pretrained_tiny(cfg, run) if cfg.sd.base == "tiny" else (None, None)
        fetch_base(cfg.sd.base, BASE_DIR, seed=cfg.seed, pipe=pipe)
        metrics = {"base": cfg.sd.base, "bytes": folder_bytes(BASE_DIR), "pretrained_here": pretrain is not None,
                   **(pretrain or {})}
        if pretrain is None:  # a pretrained base: no curves to draw
            write_history_csv(VAE_LOSS_CSV, [], VAE_COLUMNS)
            write_history_csv(UNET_LOSS_CSV, [], UNET_COLUMNS)
        run.write_metrics("base", metrics, machine_dependent=memory_perf_keys(default_device().type))
    cleanup_checkpoints(CHECKPOINT_DIR)
    print(f"fetch_base: {cfg.sd.base} → {BASE_DIR} ({metrics['bytes'] / 2**20:.1f} MiB)"
          + (f"; pretrained: VAE L1 {metrics['vae']['final_l1']:.3f}, UNet loss {metrics['unet']['final_loss']:.3f}"
             if pretrain is not None else ""))
    return metrics


def _pretrained_tiny(cfg, run) -> tuple[object, dict]:
    """Build the tiny pipeline and pretrain it on the processed train split → (pipeline, its figures)."""
    from squeezegen.data.tensors import load_split_table, table_images
    from squeezegen.metrics_files import write_history_csv
    from squeezegen.sd.pretrain import PretrainSettings, pretrain_tiny
    from squeezegen.sd.tiny import build_tiny_pipeline

    p = cfg.pretrain
    table = load_split_table(PROCESSED_DIR, "train", ["image_sd", "caption"])
    images = table_images(table, "image_sd", where=f"{PROCESSED_DIR}/train")  # (N, 3, S, S) uint8
    settings = PretrainSettings(
        vae_steps=p.vae_steps, vae_batch_size=p.vae_batch_size, vae_lr=p.vae_lr, kl_weight=p.kl_weight,
        unet_steps=p.unet_steps, unet_batch_size=p.unet_batch_size, unet_lr=p.unet_lr,
        caption_dropout=p.caption_dropout, warmup_steps=p.warmup_steps, checkpoint_every=p.checkpoint_every,
        seed=cfg.seed,
    )
    pipe = build_tiny_pipeline(cfg.seed)
    result = pretrain_tiny(pipe, images, list(table["caption"]), settings, checkpoint_dir=CHECKPOINT_DIR,
                           on_log=lambda part, step, values: run.log_step(step, {f"{part}_{k}": v for k, v in values.items()}))
    write_history_csv(VAE_LOSS_CSV, result.vae.history, VAE_COLUMNS)
    write_history_csv(UNET_LOSS_CSV, result.unet.history, UNET_COLUMNS)
    tail = max(1, len(result.unet.history) // 10)  # the UNet's loss is noisy step to step: the last tenth's mean
    return pipe, {
        "train_images": len(images),
        "prompts": result.prompts,
        "vae": {"steps": settings.vae_steps, "final_l1": result.vae.history[-1]["l1"],
                "scaling_factor": result.scaling_factor, "posterior_std": result.posterior_std, "train_seconds": round(result.vae.seconds, 2),
                "resumed_from_step": result.vae.resumed_from_step,
                "peak_mem_bytes": result.vae.peak_mem_bytes},
        "unet": {"steps": settings.unet_steps, "first_loss": result.unet.history[0]["loss"],
                 "final_loss": sum(h["loss"] for h in result.unet.history[-tail:]) / tail,
                 "train_seconds": round(result.unet.seconds, 2), "peak_mem_bytes": result.unet.peak_mem_bytes,
                 "resumed_from_step": result.unet.resumed_from_step},
    }
