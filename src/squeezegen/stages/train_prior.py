"""train_prior: the conditional prior over the frozen RQ-VAE's codes (style, genre, score → codes);
`prior.kind` picks an RQ-Transformer (raster order, L codes per position) or a next-scale prior
(one scale per pass, for a pyramid RQ-VAE).

Inputs: `data/processed` (train/val images at the RQ resolution, their style, genre and score)
and `models/rqvae/`. The codes of both splits are encoded once per run and are the prior's data.
Outputs: `models/prior/` (safetensors + config.json), `metrics/prior.json` (params, val NLL with
and without the conditions: how much the condition tells), `metrics/prior_loss.csv`.
Sampling (guidance, temperature, top-k) happens in evaluate and `squeezegen sample`, so changing
those knobs never re-trains the prior. Checkpoints go to `checkpoints/train_prior/`.
"""

from __future__ import annotations

import math
from pathlib import Path

from squeezegen.config import load_config
from squeezegen.errors import UserError
from squeezegen.metrics_files import memory_perf_keys
from squeezegen.tracking import stage_run

PROCESSED_DIR = Path("data/processed")
RQVAE_DIR = Path("models/rqvae")
MODEL_DIR = Path("models/prior")
CHECKPOINT_DIR = Path("checkpoints/train_prior")
LOSS_CSV = Path("metrics/prior_loss.csv")
ENCODE_BATCH = 64  # images per batch when encoding the codes


def main(params: str = "params.yaml", profile: str | None = None) -> dict:
    from squeezegen.data.tensors import load_image_tensors
    from squeezegen.files import fingerprint, sha256_file, tensor_hash
    from squeezegen.metrics_files import write_history_csv
    from squeezegen.model_folder import WEIGHTS_FILE
    from squeezegen.rq.generate import encode_codes
    from squeezegen.rq.model import count_parameters, load_rqvae
    from squeezegen.rq.prior import save_prior
    from squeezegen.rq.prior_train import (
        code_nll,
        condition_tensors,
        load_conditions,
        prior_data,
        prior_spec,
        train_prior,
    )
    from squeezegen.training import cleanup_checkpoints, cosine_settings, make_accelerator

    cfg = load_config(params, profile=profile)
    prior_cfg = cfg.prior
    if not (RQVAE_DIR / WEIGHTS_FILE).is_file():
        raise UserError(f"{RQVAE_DIR}: no trained RQ-VAE; run `dvc repro train_rqvae` first")
    with stage_run("train_prior", cfg) as run:
        accelerator = make_accelerator(cosine_settings(prior_cfg, seed=cfg.seed))
        device = accelerator.device
        rqvae = load_rqvae(RQVAE_DIR, device).requires_grad_(False)
        splits = {}
        for split in ("train", "val"):
            images = load_image_tensors(PROCESSED_DIR, split)  # (M, 3, H, W) uint8
            codes = encode_codes(rqvae, images, batch_size=ENCODE_BATCH, device=device)  # (M, N, L)
            splits[split] = (codes, load_conditions(PROCESSED_DIR, split))
        train_codes, (styles, genres, scores) = splits["train"]
        side = images.shape[-1] // rqvae.downsample
        spec = prior_spec(prior_cfg, rqvae=rqvae, styles=styles, genres=genres, grid_hw=(side, side))
        train_codes = prior_data(spec, rqvae, train_codes)
        train_cond = condition_tensors(spec, styles, genres, scores)
        result = train_prior(
            cfg=prior_cfg,
            spec=spec,
            seed=cfg.seed,
            codes=train_codes,
            conditions=train_cond,
            checkpoint_dir=CHECKPOINT_DIR,
            fingerprint=fingerprint(
                prior=cfg.section_dict("prior"), seed=cfg.seed, codes=tensor_hash(train_codes, *train_cond),
                rqvae_weights=sha256_file(RQVAE_DIR / WEIGHTS_FILE),
            ),
            accelerator=accelerator,
            on_log=run.log_step,
        )
        if not accelerator.is_main_process:
            return {}
        model = result.model.eval()
        save_prior(model, MODEL_DIR, meta={"image_size": int(images.shape[-1]), "steps": prior_cfg.max_steps,
                                           "rqvae_sha256": sha256_file(RQVAE_DIR / WEIGHTS_FILE)})
        val_codes, val_meta = splits["val"]
        val_codes = prior_data(spec, rqvae, val_codes)
        val_cond = condition_tensors(spec, *val_meta)
        nll = code_nll(model, val_codes, val_cond)
        nll_uncond = code_nll(model, val_codes, val_cond, conditional=False)
        metrics = {
            "kind": spec.kind,
            "params": count_parameters(model),
            "codes_per_image": spec.tokens,
            "train_images": len(train_codes),
            "final_loss": result.history[-1]["loss"],
            "val_nll": nll,  # nats per code
            "val_nll_unconditional": nll_uncond,
            "val_bits_per_image": nll * spec.tokens / math.log(2),
            "condition_gain_nats": nll_uncond - nll,  # what style + genre + score tell about the codes
            "uniform_nll": math.log(spec.codebook_size),
            "train_seconds": round(result.seconds, 2),
            "resumed_from_step": result.resumed_from_step,  # > 0: the timings cover the steps after it only
            "steps_per_s": round(result.steps_per_s, 3),
            "peak_mem_bytes": result.peak_mem_bytes,
        }
        write_history_csv(LOSS_CSV, result.history, ["step", "loss", "lr"])
        run.write_metrics("prior", metrics, machine_dependent=memory_perf_keys(device.type))
        cleanup_checkpoints(CHECKPOINT_DIR)
    print(
        f"train_prior: {metrics['params']:,} params, val NLL {nll:.3f} nats/code "
        f"({nll_uncond:.3f} without the condition, uniform {metrics['uniform_nll']:.3f}) → {MODEL_DIR}"
    )
    return metrics
