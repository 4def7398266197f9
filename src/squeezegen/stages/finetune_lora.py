"""finetune_lora: LoRA on the base UNet's attention, trained on `data/processed` (image_sd, caption).

Outputs: `models/lora/pytorch_lora_weights.safetensors` (adapter only, diffusers format),
`metrics/lora.json`, `metrics/lora_loss.csv` (step,loss) and `reports/lora/samples.png`
(base vs base + LoRA at the same prompts and seeds). Resumable checkpoints go to
`checkpoints/finetune_lora/` (not a DVC output) and are deleted on success.
"""

from __future__ import annotations

from pathlib import Path

from squeezegen.config import load_config
from squeezegen.metrics_files import memory_perf_keys
from squeezegen.tracking import stage_run

PROCESSED_DIR = Path("data/processed")
BASE_DIR = Path("models/base")
LORA_DIR = Path("models/lora")
CHECKPOINT_DIR = Path("checkpoints/finetune_lora")
LOSS_CSV = Path("metrics/lora_loss.csv")
SAMPLES = Path("reports/lora/samples.png")


def main(params: str = "params.yaml", profile: str | None = None) -> dict:
    import datasets

    from squeezegen.errors import UserError
    from squeezegen.files import atomic_path
    from squeezegen.memory.fit import check_memory
    from squeezegen.memory.probes import free_memory, measure_peak, reset_stage_peak, stage_peak_bytes
    from squeezegen.metrics_files import write_history_csv
    from squeezegen.sd.generate import before_after_grid, sample_prompts
    from squeezegen.sd.lora import LoraSettings, estimate_training_bytes, lora_fingerprint, train_lora
    from squeezegen.training import cleanup_checkpoints, make_accelerator

    cfg = load_config(params, profile=profile)
    lora = cfg.lora
    if not (PROCESSED_DIR / "dataset_dict.json").is_file():
        raise UserError(f"{PROCESSED_DIR}: no processed dataset; run the preprocess stage first")
    if not (BASE_DIR / "model_index.json").is_file():
        raise UserError(f"{BASE_DIR}: no base pipeline; run the fetch_base stage first")
    settings = LoraSettings(
        rank=lora.rank, alpha=lora.alpha, target_modules=lora.target_modules, lr=lora.lr, max_steps=lora.max_steps,
        batch_size=lora.batch_size, checkpoint_every=lora.checkpoint_every, seed=cfg.seed, resolution=cfg.data.sd_size,
        lr_scheduler=lora.lr_scheduler, warmup_steps=lora.warmup_steps, weight_decay=lora.weight_decay,
        max_grad_norm=lora.max_grad_norm, grad_accum=lora.grad_accum, min_snr_gamma=lora.min_snr_gamma,
        mixed_precision="no" if lora.mixed_precision == "fp32" else lora.mixed_precision, gradient_checkpointing=lora.gradient_checkpointing,
        use_8bit_adam=lora.use_8bit_adam, num_workers=lora.num_workers, prompt_template=cfg.sd.prompt_template,
        rating_in_caption=lora.rating_in_caption,
    )
    accelerator = make_accelerator(settings.loop_settings())
    profile_key = f"profiles.{cfg.profile}"
    check_memory(  # before hours of training: say which knob to lower rather than be killed
        estimate_training_bytes(BASE_DIR, settings, accelerator.device), accelerator.device, what="finetune_lora",
        knobs=[f"{profile_key}.lora.batch_size", f"{profile_key}.data.sd_size", "lora.gradient_checkpointing: true (GPU)"],
    )
    reset_stage_peak(accelerator.device)
    with stage_run("finetune_lora", cfg) as run:
        train_split = datasets.load_from_disk(str(PROCESSED_DIR))["train"]
        fingerprint = lora_fingerprint(
            settings=settings, base_dir=BASE_DIR, data_files=[f["filename"] for f in train_split.cache_files]
        )
        result = train_lora(
            base_dir=BASE_DIR, dataset=train_split, settings=settings, out_dir=LORA_DIR, checkpoint_dir=CHECKPOINT_DIR,
            fingerprint=fingerprint, accelerator=accelerator, on_log=run.log_step,
        )
        if not accelerator.is_main_process:
            return {}
        history = result.train.history
        write_history_csv(LOSS_CSV, history, ["step", "loss"])

        # The grid loads its own pipeline from the saved files: drop the trained UNet, its optimizer
        # state and the frozen VAE / CLIP first, or two full models are resident at once.
        result.train.model = None
        accelerator.free_memory()
        free_memory(accelerator.device)
        with measure_peak(accelerator.device) as sample_peak:
            grid = before_after_grid(
                BASE_DIR, LORA_DIR, sample_prompts(lora.sample_prompts, cfg.sd.prompt_template), seed=cfg.seed,
                steps=cfg.sd.infer_steps, size=cfg.data.sd_size, device=str(accelerator.device),
            )
        with atomic_path(SAMPLES) as tmp:
            grid.save(tmp, format="PNG")
        run.log_artifact(SAMPLES, "pictures")
        metrics = {
            "trainable_params": result.trainable_params,
            "total_params": result.total_params,
            "final_loss": history[-1]["loss"],
            "steps": len(history),
            "steps_per_s": round(result.train.steps_per_s, 4),
            "peak_mem_bytes": stage_peak_bytes(accelerator.device),  # the whole stage: what it needs to run
            "peak_mem_bytes_train": result.train.peak_mem_bytes,
            "peak_mem_bytes_samples": sample_peak.peak_bytes,
            "seconds": round(result.train.seconds, 2),
            "resumed_from_step": result.train.resumed_from_step,
        }
        run.write_metrics("lora", metrics, machine_dependent=memory_perf_keys(accelerator.device.type))
        cleanup_checkpoints(CHECKPOINT_DIR)
    print(
        f"finetune_lora: {metrics['trainable_params']:,} trainable of {metrics['total_params']:,} UNet params, "
        f"final loss {metrics['final_loss']:.4f} → {LORA_DIR}"
    )
    return metrics
