"""train_refiner: train the refinement UNet on (frozen RQ-VAE reconstruction, original) pairs.

Outputs: `models/refiner/` (diffusers UNet2DModel folder), `metrics/refiner.json` (params and
val psnr / ssim / l1 / LPIPS before and after refinement), `metrics/refiner_loss.csv` and
`reports/refiner/progressive.png` (the RQ progressive picture with the refined column filled).
Resumable checkpoints go to `checkpoints/train_refiner/` and are deleted on success.
"""

from __future__ import annotations

from pathlib import Path

from squeezegen.config import load_config
from squeezegen.tracking import memory_perf_keys, stage_run

PROCESSED_DIR = Path("data/processed")
RQVAE_DIR = Path("models/rqvae")
MODEL_DIR = Path("models/refiner")
CHECKPOINT_DIR = Path("checkpoints/train_refiner")
LOSS_CSV = Path("metrics/refiner_loss.csv")
PICTURE = Path("reports/refiner/progressive.png")
EVAL_BATCH = 64  # images per batch when reconstructing and evaluating


def main(params: str = "params.yaml", profile: str | None = None) -> dict:
    from squeezegen.files import sha256_file
    from squeezegen.metrics import load_lpips
    from squeezegen.rq.evaluation import evaluate_refiner, progressive_rows
    from squeezegen.rq.model import WEIGHTS_FILE, count_parameters, load_rqvae
    from squeezegen.rq.pictures import render_progressive
    from squeezegen.rq.refiner import save_refiner
    from squeezegen.rq.train import (
        fingerprint, load_image_tensors, reconstruct_batches, refiner_settings, tensor_hash, train_refiner,
        write_history_csv,
    )
    from squeezegen.train import cleanup_checkpoints, make_accelerator

    cfg = load_config(params, profile=profile)
    ref = cfg.refiner
    with stage_run("train_refiner", cfg) as run:
        train_images = load_image_tensors(PROCESSED_DIR, "train")  # (N, 3, H, W) uint8
        val_images = load_image_tensors(PROCESSED_DIR, "val")
        accelerator = make_accelerator(refiner_settings(ref, seed=cfg.seed))
        device = accelerator.device
        rqvae = load_rqvae(RQVAE_DIR, device).requires_grad_(False)
        lpips_net = load_lpips(ref.lpips_pretrained, device)
        recon = reconstruct_batches(rqvae, train_images, batch_size=EVAL_BATCH, device=device)  # (N, 3, H, W) fp16
        result = train_refiner(
            cfg=ref,
            seed=cfg.seed,
            recon=recon,
            train_images=train_images,
            checkpoint_dir=CHECKPOINT_DIR,
            fingerprint=fingerprint(
                refiner=cfg.section_dict("refiner"), seed=cfg.seed, data=tensor_hash(train_images),
                rqvae_weights=sha256_file(RQVAE_DIR / WEIGHTS_FILE),
            ),
            lpips_net=lpips_net if ref.lpips_weight > 0 else None,
            accelerator=accelerator,
            on_log=run.log_step,
        )
        if not accelerator.is_main_process:
            return {}
        refiner = result.model.eval()
        save_refiner(refiner, MODEL_DIR)

        name = ref.lpips_name
        metrics = {
            "params": count_parameters(refiner),
            **evaluate_refiner(rqvae, refiner, val_images, lpips_net=lpips_net, lpips_name=name, batch_size=EVAL_BATCH, device=device),
        }
        metrics.update(
            psnr_gain_db=metrics["psnr_after"] - metrics["psnr_before"],
            l1_reduction=1 - metrics["l1_after"] / metrics["l1_before"],
            final_loss=result.history[-1]["loss"],
            train_seconds=round(result.seconds, 2),
            steps_per_s=round(result.steps_per_s, 3),
            peak_mem_bytes=result.peak_mem_bytes,
        )
        write_history_csv(LOSS_CSV, result.history, ["step", "loss", "l1", "lpips", "lr"])

        shown = val_images[: cfg.evaluate.num_progressive]
        by_levels, refined = progressive_rows(rqvae, shown, refiner=refiner, device=device)
        render_progressive(PICTURE, shown.cpu(), by_levels, refined, title=f"RQ-VAE levels + refiner ({metrics['params'] / 1e6:.2f} M params)")
        run.log_artifact(PICTURE, "pictures")
        run.write_metrics("refiner", metrics, machine_dependent=memory_perf_keys(accelerator.device.type))
        cleanup_checkpoints(CHECKPOINT_DIR)
    print(
        f"train_refiner: val PSNR {metrics['psnr_before']:.2f} → {metrics['psnr_after']:.2f} dB, "
        f"L1 {metrics['l1_before']:.4f} → {metrics['l1_after']:.4f} → {MODEL_DIR}"
    )
    return metrics
