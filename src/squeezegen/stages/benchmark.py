"""benchmark: peak memory, seconds per image and drift from fp16, per pipeline configuration.

arch `pipeline`: models/base + models/lora + models/quantized. arch `sd15`: an SD 1.5-architecture
pipeline with random weights, written and quantized into a temporary folder here, so real-scale
memory is measured anywhere. Writes metrics/benchmark.json (keyed by configuration),
metrics/benchmark_memory.csv and reports/benchmark/ (memory.png, frontier.png — peak memory against
seconds per image —, samples.png, table.md).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from squeezegen.config import load_config
from squeezegen.errors import UserError
from squeezegen.metrics_files import memory_perf_keys
from squeezegen.stages.quantize import BASE_DIR, LORA_DIR, QUANT_DIR, quant_policy
from squeezegen.tracking import stage_run

REPORT_DIR = Path("reports/benchmark")
MEMORY_CSV = Path("metrics/benchmark_memory.csv")


def main(params: str = "params.yaml", profile: str | None = None) -> dict:
    from squeezegen.device import default_device
    from squeezegen.files import atomic_path, atomic_write_text
    from squeezegen.image_metrics import load_lpips, lpips_metric_name
    from squeezegen.sd import benchmark as bench
    from squeezegen.sd import benchmark_report as bench_report

    cfg = load_config(params, profile=profile)
    settings = cfg.benchmark
    device = default_device()
    lpips_pretrained = cfg.refiner.lpips_pretrained  # the profile's LPIPS rule (random backbone offline)
    lpips_name = lpips_metric_name(lpips_pretrained)
    # Everything the stage needs before the first configuration runs (minutes each at full scale).
    if settings.arch != "sd15":
        for folder, stage in [(BASE_DIR, "fetch_base"), (LORA_DIR, "finetune_lora"), (QUANT_DIR, "quantize")]:
            if not folder.is_dir():
                raise UserError(f"{folder}: not found; run `dvc repro {stage}` first")
    lpips_net = load_lpips(lpips_pretrained, "cpu")
    with stage_run("benchmark", cfg) as run:
        extra: dict = {"lpips_metric": lpips_name}
        with tempfile.TemporaryDirectory(prefix="sd15_") as scratch:
            if settings.arch == "sd15":
                from squeezegen.sd.sd15 import prepare_sd15_files

                base_dir, quant_dir, extra["sd15_quantize"] = prepare_sd15_files(
                    scratch, policy=quant_policy(cfg.quantize), seed=cfg.seed,
                    text_encoder_8bit=cfg.quantize.text_encoder_8bit, device=device,
                )
                lora_dir = None
            else:
                base_dir, lora_dir, quant_dir = BASE_DIR, LORA_DIR, QUANT_DIR
            job = bench.BenchmarkJob(
                base_dir=str(base_dir),
                lora_dir=None if lora_dir is None else str(lora_dir),
                quant_dir=str(quant_dir),
                device=str(device),
                compute_dtype=settings.compute_dtype,
                cpu_dtype=settings.cpu_dtype,
                seed=cfg.seed,
                steps=cfg.sd.infer_steps,
                size=settings.size,
                guidance=settings.guidance_scale,
                repeats=settings.repeats,
                vae_tile_px=settings.vae_tile_px,
                lean_text_encoder=settings.lean_text_encoder,
                tiny_vae=settings.tiny_vae,
            )
            results = bench.run_configs(settings.configs, job)

        images = {name: result["images"] for name, result in results.items()}
        drift = bench.image_drift(images, lpips_net=lpips_net, lpips_name=lpips_name)
        summary = bench.summarize(results, drift, arch=settings.arch, job=job, extra=extra)
        with atomic_path(REPORT_DIR) as tmp:
            tmp.mkdir(parents=True)
            bench_report.memory_chart(summary, str(tmp / "memory.png"))
            bench_report.frontier_chart(summary, str(tmp / "frontier.png"))
            bench_report.samples_strip(images, str(tmp / "samples.png"))
            (tmp / "table.md").write_text(bench_report.memory_table(summary, lpips_name))
        atomic_write_text(MEMORY_CSV, bench_report.memory_csv(summary))
        run.write_metrics("benchmark", summary, machine_dependent=memory_perf_keys(device.type))
        for name in ("memory.png", "frontier.png", "samples.png", "table.md"):
            run.log_artifact(REPORT_DIR / name, artifact_path="benchmark")
    return summary
