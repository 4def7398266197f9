"""train_refiner: train the refinement UNet on (frozen RQ-VAE reconstruction, original) pairs.

Outputs: `models/refiner/` (diffusers UNet2DModel folder), `metrics/refiner.json` (params and
val psnr / ssim / l1 / LPIPS before and after refinement), `metrics/refiner_loss.csv` and
`reports/refiner/progressive.png` (the RQ progressive picture with the refined column filled).
Resumable checkpoints go to `checkpoints/train_refiner/` and are deleted on success.
"""

from __future__ import annotations

import copy
from pathlib import Path

from squeezegen.config import load_config
from squeezegen.metrics_files import memory_perf_keys
from squeezegen.tracking import stage_run

PROCESSED_DIR = Path("data/processed")
RQVAE_DIR = Path("models/rqvae")
MODEL_DIR = Path("models/refiner")
CHECKPOINT_DIR = Path("checkpoints/train_refiner")
LOSS_CSV = Path("metrics/refiner_loss.csv")
PICTURE = Path("reports/refiner/progressive.png")
EVAL_BATCH = 64  # images per batch when reconstructing and evaluating


def training_memory_need(cfg, lpips_net, n_images: int, device) -> int:
    """Bytes train_refiner will hold on `device` at its worst, estimated without training: weights
    with their gradients and AdamW moments, LPIPS, one batch's activations (the model run on the
    meta device: no memory, no arithmetic) and, on a CPU, every image and its reconstruction."""
    import torch

    from squeezegen.memory.fit import activation_bytes_per_sample
    from squeezegen.rq.recon_train import make_refiner_loss
    from squeezegen.rq.refiner import Refiner

    ref, size = cfg.refiner, cfg.data.rq_size
    with torch.device("meta"):
        model = Refiner.build(channels=ref.channels, image_size=size).train()
    meta_lpips = copy.deepcopy(lpips_net).to("meta") if ref.lpips_weight > 0 else None
    loss_fn = make_refiner_loss(lpips_weight=ref.lpips_weight, lpips_net=meta_lpips)

    def forward(batch: int) -> None:
        recon = torch.empty(batch, 3, size, size, dtype=torch.float16, device="meta")
        loss_fn(model, (recon, torch.empty(batch, 3, size, size, dtype=torch.uint8, device="meta")), 0)

    weights = sum(p.numel() for p in model.parameters()) * 16 + sum(p.numel() * 4 for p in lpips_net.parameters())
    data = n_images * 3 * size * size * 3 if device.type == "cpu" else 0  # uint8 images + float16 recons, in host RAM
    return weights + data + activation_bytes_per_sample(forward) * ref.batch_size


def main(params: str = "params.yaml", profile: str | None = None) -> dict:
    import datasets

    from squeezegen.data.tensors import load_image_tensors
    from squeezegen.errors import UserError
    from squeezegen.files import fingerprint, sha256_file, tensor_hash
    from squeezegen.image_metrics import load_lpips
    from squeezegen.memory.fit import check_memory
    from squeezegen.memory.probes import reset_stage_peak, stage_peak_bytes
    from squeezegen.metrics_files import write_history_csv
    from squeezegen.model_folder import WEIGHTS_FILE
    from squeezegen.rq.evaluation import evaluate_refiner, progressive_rows
    from squeezegen.rq.model import count_parameters, load_rqvae
    from squeezegen.rq.pictures import render_progressive
    from squeezegen.rq.recon_train import reconstruct_batches, train_refiner
    from squeezegen.rq.refiner import save_refiner
    from squeezegen.training import cleanup_checkpoints, cosine_settings, make_accelerator

    cfg = load_config(params, profile=profile)
    ref = cfg.refiner
    # Everything the stage needs, checked before the first slow step.
    for folder, file, stage in [(PROCESSED_DIR, "dataset_dict.json", "preprocess"), (RQVAE_DIR, WEIGHTS_FILE, "train_rqvae")]:
        if not (folder / file).is_file():
            raise UserError(f"{folder / file}: not found; run `dvc repro {stage}` first")
    accelerator = make_accelerator(cosine_settings(ref, seed=cfg.seed))
    device = accelerator.device
    lpips_net = load_lpips(ref.lpips_pretrained, device)
    n_images = sum(datasets.load_from_disk(str(PROCESSED_DIR)).num_rows.values())
    check_memory(training_memory_need(cfg, lpips_net, n_images, device), device, what="train_refiner", knobs=[
        f"profiles.{cfg.profile}.refiner.batch_size", f"profiles.{cfg.profile}.refiner.channels",
        f"profiles.{cfg.profile}.data.max_images",
    ])
    reset_stage_peak(device)
    with stage_run("train_refiner", cfg) as run:
        train_images = load_image_tensors(PROCESSED_DIR, "train")  # (N, 3, H, W) uint8
        val_images = load_image_tensors(PROCESSED_DIR, "val")
        rqvae = load_rqvae(RQVAE_DIR, device).requires_grad_(False)
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
            resumed_from_step=result.resumed_from_step,  # > 0: the timings cover the steps after it only
            steps_per_s=round(result.steps_per_s, 3),
            peak_mem_bytes_train=result.peak_mem_bytes,
        )
        write_history_csv(LOSS_CSV, result.history, ["step", "loss", "l1", "lpips", "lr"])

        shown = val_images[: cfg.evaluate.num_progressive]
        by_levels, refined = progressive_rows(rqvae, shown, refiner=refiner, device=device)
        render_progressive(PICTURE, shown.cpu(), by_levels, refined, title=f"RQ-VAE levels + refiner ({metrics['params'] / 1e6:.2f} M params)")
        run.log_artifact(PICTURE, "pictures")
        metrics["peak_mem_bytes"] = stage_peak_bytes(device)  # the whole stage, evaluation and picture included
        run.write_metrics("refiner", metrics, machine_dependent=memory_perf_keys(accelerator.device.type))
        cleanup_checkpoints(CHECKPOINT_DIR)
    print(
        f"train_refiner: val PSNR {metrics['psnr_before']:.2f} → {metrics['psnr_after']:.2f} dB, "
        f"L1 {metrics['l1_before']:.4f} → {metrics['l1_after']:.4f} → {MODEL_DIR}"
    )
    return metrics
