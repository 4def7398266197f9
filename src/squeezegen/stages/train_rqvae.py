"""train_rqvae: train the residual-quantized VAE on `data/processed` (image_rq, train split).

Outputs: `models/rqvae/` (safetensors + config.json), `metrics/rqvae.json` (val PSNR/SSIM/LPIPS,
per-level codebook usage and perplexity, bits per image, quality by number of levels),
`metrics/rqvae_loss.csv`, `metrics/rqvae_levels.csv` and `reports/rq/progressive.png`.
Resumable checkpoints go to `checkpoints/train_rqvae/` and are deleted on success.
"""

from __future__ import annotations

import copy
from pathlib import Path

from squeezegen.config import load_config
from squeezegen.metrics_files import memory_perf_keys
from squeezegen.tracking import stage_run

PROCESSED_DIR = Path("data/processed")
MODEL_DIR = Path("models/rqvae")
CHECKPOINT_DIR = Path("checkpoints/train_rqvae")
LOSS_CSV = Path("metrics/rqvae_loss.csv")
LEVELS_CSV = Path("metrics/rqvae_levels.csv")
PICTURE = Path("reports/rq/progressive.png")
EVAL_BATCH = 64  # val images per evaluation batch


def training_memory_need(cfg, lpips_net, n_images: int, device) -> int:
    """Bytes train_rqvae will hold on `device` at its worst, estimated without training: weights
    with their gradients and AdamW moments, one batch's activations (encoder and decoder run on
    the meta device; the quantizer's share at the coarse grid is small) and, on a CPU, every image."""
    import torch

    from squeezegen.image_metrics import lpips_distance
    from squeezegen.memory.fit import activation_bytes_per_sample
    from squeezegen.rq.recon_train import build_rqvae

    rq, size = cfg.rqvae, cfg.data.rq_size
    with torch.device("meta"):
        model = build_rqvae(rq, image_size=size).train()
    meta_lpips = copy.deepcopy(lpips_net).to("meta") if rq.lpips_weight > 0 else None

    def forward(batch: int) -> None:
        x = torch.empty(batch, 3, size, size, device="meta")
        recon = model.decoder(model.encoder(x))
        if meta_lpips is not None:
            lpips_distance(meta_lpips, recon, x)

    weights = sum(p.numel() for p in model.parameters()) * 16 + sum(p.numel() * 4 for p in lpips_net.parameters())
    data = n_images * 3 * size * size if device.type == "cpu" else 0  # the uint8 images stay in host RAM
    return weights + data + activation_bytes_per_sample(forward) * rq.batch_size


def main(params: str = "params.yaml", profile: str | None = None) -> dict:
    import datasets

    from squeezegen.data.tensors import load_image_tensors
    from squeezegen.errors import UserError
    from squeezegen.files import atomic_write_text, fingerprint, tensor_hash
    from squeezegen.image_metrics import load_lpips, lpips_metric_name
    from squeezegen.memory.fit import check_memory
    from squeezegen.memory.probes import reset_stage_peak, stage_peak_bytes
    from squeezegen.metrics_files import write_history_csv
    from squeezegen.rq.evaluation import evaluate_rqvae, progressive_rows
    from squeezegen.rq.model import count_parameters, save_rqvae
    from squeezegen.rq.pictures import render_progressive
    from squeezegen.rq.recon_train import train_rqvae
    from squeezegen.training import cleanup_checkpoints, cosine_settings, make_accelerator

    cfg = load_config(params, profile=profile)
    rq = cfg.rqvae
    # The RQ branch follows one LPIPS rule: the refiner's (pretrained backbone, or the offline stand-in).
    lpips_pretrained = cfg.refiner.lpips_pretrained
    # Everything the stage needs, checked before the first slow step.
    if not (PROCESSED_DIR / "dataset_dict.json").is_file():
        raise UserError(f"{PROCESSED_DIR}: no processed dataset; run `dvc repro preprocess` first")
    accelerator = make_accelerator(cosine_settings(rq, seed=cfg.seed))
    device = accelerator.device
    lpips_net = load_lpips(lpips_pretrained, device)
    n_images = sum(datasets.load_from_disk(str(PROCESSED_DIR)).num_rows.values())
    check_memory(training_memory_need(cfg, lpips_net, n_images, device), device, what="train_rqvae", knobs=[
        f"profiles.{cfg.profile}.rqvae.batch_size", f"profiles.{cfg.profile}.rqvae.channels",
        f"profiles.{cfg.profile}.data.max_images",
    ])
    reset_stage_peak(device)
    with stage_run("train_rqvae", cfg) as run:
        train_images = load_image_tensors(PROCESSED_DIR, "train")  # (N, 3, H, W) uint8
        val_images = load_image_tensors(PROCESSED_DIR, "val")
        result = train_rqvae(
            cfg=rq,
            seed=cfg.seed,
            train_images=train_images,
            checkpoint_dir=CHECKPOINT_DIR,
            fingerprint=fingerprint(
                rqvae=cfg.section_dict("rqvae"), seed=cfg.seed, data=tensor_hash(train_images),
                lpips_pretrained=lpips_pretrained if rq.lpips_weight > 0 else None,
            ),
            lpips_net=lpips_net if rq.lpips_weight > 0 else None,
            accelerator=accelerator,
            on_log=run.log_step,
        )
        if not accelerator.is_main_process:
            return {}
        model = result.model.eval()
        save_rqvae(model, MODEL_DIR, meta={"image_size": int(train_images.shape[-1]), "steps": rq.max_steps})

        lpips_name = lpips_metric_name(lpips_pretrained)
        metrics = evaluate_rqvae(model, val_images, lpips_net=lpips_net, lpips_name=lpips_name, batch_size=EVAL_BATCH, device=device)
        metrics.update(
            params=count_parameters(model),
            final_loss=result.history[-1]["loss"],
            train_seconds=round(result.seconds, 2),
            resumed_from_step=result.resumed_from_step,  # > 0: the timings cover the steps after it only
            steps_per_s=round(result.steps_per_s, 3),
            peak_mem_bytes_train=result.peak_mem_bytes,
        )
        write_history_csv(LOSS_CSV, result.history, ["step", "loss", "recon", "commitment", "lpips", "lr"])
        rows = [f"{k},{p:.4f},{s:.4f}" for k, (p, s) in enumerate(zip(metrics["psnr_by_levels"], metrics["ssim_by_levels"]), 1)]
        atomic_write_text(LEVELS_CSV, "levels,psnr,ssim\n" + "\n".join(rows) + "\n")

        shown = val_images[: cfg.evaluate.num_progressive]
        by_levels, _ = progressive_rows(model, shown, device=device)
        if model.pyramid:
            sides = " → ".join(f"{s}²" for s in metrics["scales"])
            title = f"RQ-VAE: a pyramid of {rq.levels} levels ({sides} = {metrics['codes_per_image']} codes), K={rq.codebook_size}"
        else:
            title = f"RQ-VAE: {metrics['grid'][0]}×{metrics['grid'][1]} codes × {rq.levels} levels, K={rq.codebook_size}"
        render_progressive(PICTURE, shown.cpu(), by_levels, None, title=title)
        run.log_artifact(PICTURE, "pictures")
        metrics["peak_mem_bytes"] = stage_peak_bytes(device)  # the whole stage, evaluation and picture included
        run.write_metrics("rqvae", metrics, machine_dependent=memory_perf_keys(accelerator.device.type))
        cleanup_checkpoints(CHECKPOINT_DIR)
    by_level = ", ".join(f"{v:.2f}" for v in metrics["psnr_by_levels"])
    print(f"train_rqvae: val PSNR by levels [{by_level}] dB, {lpips_name} {metrics[lpips_name]:.4f} → {MODEL_DIR}")
    return metrics
