"""evaluate: both branches side by side → `reports/report.md`, `reports/evaluate/`, `metrics/evaluate.json`.

The headline numbers are read from the upstream metrics files (nothing is timed again, so an
RQ-only change leaves every `sd.*` value as it was). Its own pictures: the SD sample grid (the
compressed pipeline under the uncompressed one at the same prompts and seeds), and the
generation section (`gen.*`, `squeezegen.generation`): every generator on the same conditions and
sampling seeds, scored by the judge, each figure with its 95% bootstrap interval (`gen.<row>.ci95`).
"""

from __future__ import annotations

from pathlib import Path

from squeezegen.config import Config, load_config
from squeezegen.metrics_files import memory_perf_keys
from squeezegen.tracking import stage_run

BASE_DIR = Path("models/base")
LORA_DIR = Path("models/lora")
QUANT_DIR = Path("models/quantized")
RQVAE_DIR = Path("models/rqvae")
REFINER_DIR = Path("models/refiner")
PRIOR_DIR = Path("models/prior")
JUDGE_DIR = Path("models/judge")
PROCESSED_DIR = Path("data/processed")
REPORT = Path("reports/report.md")
PICTURE_DIR = Path("reports/evaluate")
MIN_CELL_PX = 192  # sample grid cells are at least this wide (integer upscaling of small images)  # SD_SAMPLES in squeezegen.report is relative to reports/
ROW_LABELS = {  # sample grid rows: configuration → label
    "fp16": "uncompressed\n(base + LoRA)",
    "q4k_unet_int8_clip_cpu_vae": "Q4_K UNet\n+ int8 CLIP\n+ CPU VAE",
}


def sd_sample_grid(cfg: Config, prompts: list[str], seeds: list[int]):
    """(labelled PIL grid, mean PSNR in dB of the compressed images against the uncompressed ones).

    One row per configuration in ROW_LABELS, one column per (prompt, seed); size, steps, guidance
    and compute dtype as the benchmark and LoRA samples use them.
    """
    import numpy as np
    import torch
    from PIL import Image

    from squeezegen.device import default_device
    from squeezegen.image_metrics import psnr
    from squeezegen.memory.probes import free_memory
    from squeezegen.pictures import labelled_grid
    from squeezegen.sd.configurations import build_pipeline, generate_measured

    device = default_device()
    rows = []
    for name in ROW_LABELS:
        bundle = build_pipeline(
            name, base_dir=BASE_DIR, lora_dir=LORA_DIR, quant_dir=QUANT_DIR, device=device,
            compute_dtype=cfg.benchmark.compute_dtype, cpu_dtype=cfg.benchmark.cpu_dtype,
        )
        result = generate_measured(
            bundle, prompts, seeds, steps=cfg.sd.infer_steps, size=cfg.data.sd_size, guidance=cfg.benchmark.guidance_scale
        )
        rows.append(result.images)
        del bundle, result
        free_memory(device)

    def as_tensor(images):  # PIL list → (N, 3, H, W) in [0, 1]
        return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2) / 255.0

    drift = float(psnr(as_tensor(rows[1]), as_tensor(rows[0]), value_range=(0.0, 1.0)).mean())
    # small (toy) images are shown enlarged so the prompt above each column has room to be read
    scale = max(1, -(-MIN_CELL_PX // cfg.data.sd_size))
    rows = [[im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST) for im in row] for row in rows]
    grid = labelled_grid(rows, row_labels=list(ROW_LABELS.values()), col_labels=prompts)
    return grid, drift


def main(params: str = "params.yaml", profile: str | None = None) -> dict:
    from squeezegen import report
    from squeezegen.formatting import fmt_bytes, fmt_db, fmt_ratio

    cfg = load_config(params, profile=profile)
    report.check_inputs(".")  # before the slow imports: a missing input fails at once

    from squeezegen.files import atomic_path, atomic_write_text
    from squeezegen.generation.measure import run_generation
    from squeezegen.generation.render import generation_markdown, with_interval
    from squeezegen.rq.model import read_rqvae_config
    from squeezegen.sd.generate import sample_prompts

    metrics = report.load_metrics(".")
    rq_size = read_rqvae_config(RQVAE_DIR).get("meta", {}).get("image_size")
    headline = report.headline(metrics, rq_image_size=rq_size)

    with stage_run("evaluate", cfg) as run:
        prompts = sample_prompts(cfg.evaluate.num_prompts, cfg.sd.prompt_template)
        seeds = [cfg.seed + i for i in range(len(prompts))]
        grid, grid_psnr = sd_sample_grid(cfg, prompts, seeds)
        headline["gen"], pictures = run_generation(
            cfg, processed_dir=PROCESSED_DIR, judge_dir=JUDGE_DIR, prior_dir=PRIOR_DIR, rqvae_dir=RQVAE_DIR,
            refiner_dir=REFINER_DIR, base_dir=BASE_DIR, lora_dir=LORA_DIR, quant_dir=QUANT_DIR,
        )
        with atomic_path(PICTURE_DIR) as tmp:
            tmp.mkdir(parents=True)
            grid.save(tmp / Path(report.SD_SAMPLES).name, format="PNG")
            for name, picture in pictures.items():
                picture.save(tmp / name, format="PNG")
        caption = (
            f"Top row: the uncompressed pipeline; bottom row: Q4_K UNet + int8 CLIP + CPU VAE. "
            f"{len(prompts)} LAPIS-style prompts, seeds {seeds[0]}–{seeds[-1]} from left to right, {cfg.data.sd_size} px, "
            f"{cfg.sd.infer_steps} steps, guidance {cfg.benchmark.guidance_scale:g}. "
            f"Mean PSNR of the bottom row against the top row: {fmt_db(grid_psnr)}."
        )
        generation = generation_markdown(headline["gen"], judge=metrics["judge"], profile=cfg.profile)
        text = report.build_report(metrics, headline, profile=cfg.profile, samples_caption=caption, generation=generation)
        atomic_write_text(REPORT, text)
        run.write_metrics("evaluate", headline, machine_dependent=memory_perf_keys(metrics["benchmark"].get("device_type", "cpu")))
        # the report and every picture it shows, at the same relative paths, so the artifact folder reads on its own
        run.log_artifact(REPORT, "report")
        for picture in report.PICTURES:
            run.log_artifact(REPORT.parent / picture, str(Path("report", picture).parent))
    sd, rq, gen = headline["sd"], headline["rq"], headline["gen"]["rq_prior"]
    print(
        f"evaluate: SD peak {fmt_ratio(sd['peak_mem_ratio'])} of fp16, UNet {fmt_bytes(sd['unet_bytes_gguf'])}; "
        f"RQ PSNR {fmt_db(rq['psnr_unrefined'])} → {fmt_db(rq['psnr_refined'])}; RQ generator: judged style "
        f"accuracy {with_interval(gen, 'style_acc', '.2f')}, score control {with_interval(gen, 'score_control', '+.1f')}, "
        f"fd_judge {with_interval(gen, 'fd_judge', '.2f')} → {REPORT}"
    )
    return headline
