"""The evaluate stage's numbers and words: headline metrics and `reports/report.md`.

Everything here is a pure function of the upstream stages' metrics dicts (plus a check that the
upstream files exist): no timing is measured again, so the headline of an unchanged branch is
bit-for-bit the same after a change to the other branch. Pictures are referenced by paths
relative to `reports/`, where the report lives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from squeezegen.errors import UserError
from squeezegen.formatting import fmt_bytes, fmt_db, fmt_num, fmt_ratio, markdown_table
from squeezegen.metrics_files import merge_perf

# metrics/<name>.json → the stage that writes it
METRICS_STAGES: dict[str, str] = {
    "data": "preprocess",
    "lora": "finetune_lora",
    "quantize": "quantize",
    "benchmark": "benchmark",
    "rqvae": "train_rqvae",
    "refiner": "train_refiner",
    "judge": "train_judge",
    "prior": "train_prior",
}
# other files and folders evaluate reads (relative to the repo root) → the stage that writes them
OTHER_INPUTS: dict[str, str] = {
    "reports/lora/samples.png": "finetune_lora",
    "reports/benchmark/memory.png": "benchmark",
    "reports/benchmark/frontier.png": "benchmark",
    "reports/quantize/bits_per_layer.png": "quantize",
    "reports/benchmark/samples.png": "benchmark",
    "reports/refiner/progressive.png": "train_refiner",
    "models/base": "fetch_base",
    "models/lora": "finetune_lora",
    "models/quantized": "quantize",
    "models/rqvae": "train_rqvae",
    "models/refiner": "train_refiner",
    "models/judge": "train_judge",
    "models/prior": "train_prior",
    "data/processed": "preprocess",
}
SD_SAMPLES = "evaluate/sd_samples.png"  # drawn by the evaluate stage, relative to reports/
# every picture the report shows, relative to reports/ (where report.md lives)
GENERATION_PICTURES = ("evaluate/generation.png", "evaluate/rq_scores.png", "evaluate/style_genre.png", "evaluate/rq_progressive.png")  # drawn by evaluate too
PICTURES = (SD_SAMPLES, *GENERATION_PICTURES, "benchmark/memory.png", "benchmark/frontier.png", "benchmark/samples.png",
            "quantize/bits_per_layer.png", "lora/samples.png", "refiner/progressive.png")
BASELINE_LABELS = {"uniform_Q4_K": "uniform Q4_K", "uniform_Q3_K": "uniform Q3_K"}  # the rest print as named
REFERENCE = "fp16"
COMPRESSED = "q4k_unet_int8_clip_cpu_vae"
RGB_BITS_PER_PIXEL = 24  # an uncompressed 8-bit RGB pixel, the yardstick for bits per image
LPIPS_NAMES = ("lpips", "lpips_randnet")  # real LPIPS, or the random-backbone stand-in


# ---------------------------------------------------------------------------- inputs


def missing_inputs(root: str | Path = ".") -> list[tuple[str, str]]:
    """(path, stage that makes it) for every evaluate input that does not exist under `root`."""
    root = Path(root)
    wanted = {f"metrics/{name}.json": stage for name, stage in METRICS_STAGES.items()} | OTHER_INPUTS
    return [(path, stage) for path, stage in wanted.items() if not (root / path).exists()]


def check_inputs(root: str | Path = ".") -> None:
    """UserError naming every missing input and the stage that makes it."""
    missing = missing_inputs(root)
    if missing:
        listed = ", ".join(f"{path} (made by {stage})" for path, stage in missing)
        stages = " ".join(dict.fromkeys(stage for _, stage in missing))
        raise UserError(f"evaluate needs files that are not there: {listed}; run `dvc repro {stages}` first")


def load_metrics(root: str | Path = ".") -> dict[str, dict[str, Any]]:
    """{name: dict} from `metrics/<name>.json` for every upstream metrics file; UserError if one
    is missing or not a JSON object."""
    out = {}
    for name, stage in METRICS_STAGES.items():
        path = Path(root) / "metrics" / f"{name}.json"
        if not path.is_file():
            raise UserError(f"{path}: not found; it is made by the {stage} stage: run `dvc repro {stage}` first")
        try:
            value = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc}); re-run `dvc repro --force {stage}`") from None
        if not isinstance(value, dict):
            raise UserError(f"{path}: expected a JSON object of metrics; re-run `dvc repro --force {stage}`")
        out[name] = merge_perf(value)  # consumers read one dict; `perf` is a file-layout matter
    return out


# ---------------------------------------------------------------------------- headline


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def lpips_name(metrics: Mapping[str, Any], suffix: str = "") -> str | None:
    """Which LPIPS key a metrics dict uses (`lpips` or `lpips_randnet`, + `suffix`), or None."""
    return next((name for name in LPIPS_NAMES if f"{name}{suffix}" in metrics), None)


def compressed_config(benchmark: Mapping[str, Any]) -> str | None:
    """The configuration the headline compares with fp16: the fully compressed one if benchmarked,
    else the last non-fp16 configuration, else None."""
    others = [name for name in benchmark.get("configs", []) if name != REFERENCE and name in benchmark]
    return COMPRESSED if COMPRESSED in others else (others[-1] if others else None)


def sd_headline(quantize: Mapping[str, Any], benchmark: Mapping[str, Any]) -> dict[str, Any]:
    """The SD branch's headline numbers (bytes, ratios = compressed / fp16 unless named otherwise)."""
    ref = benchmark[REFERENCE]
    comp = benchmark.get(compressed_config(benchmark) or "", {})
    lp = benchmark.get("lpips_metric") or lpips_name(comp) or "lpips"
    out = {
        "peak_mem_bytes_fp16": ref.get("peak_bytes"),
        "peak_mem_bytes_compressed": comp.get("peak_bytes"),
        "peak_mem_ratio": _ratio(comp.get("peak_bytes"), ref.get("peak_bytes")),
        "weights_bytes_fp16": ref.get("weights_bytes"),
        "weights_bytes_compressed": comp.get("weights_bytes"),
        "weights_ratio": _ratio(comp.get("weights_bytes"), ref.get("weights_bytes")),
        "seconds_per_image_fp16": ref.get("seconds_per_image"),
        "seconds_per_image_compressed": comp.get("seconds_per_image"),
        "drift_psnr": comp.get("psnr"),
        f"drift_{lp}": comp.get(lp),
        "unet_bytes_fp16": quantize["unet_bytes_fp16"],
        "unet_bytes_gguf": quantize["unet_bytes_gguf"],
        "unet_compression": _ratio(quantize["unet_bytes_fp16"], quantize["unet_bytes_gguf"]),
        "unet_bpw": quantize["unet_bpw"],
        "unet_q4k_fraction": quantize.get("q4k_fraction"),
        "text_encoder_bytes_fp16": quantize.get("text_encoder_bytes_fp16"),
        "text_encoder_bytes_int8": quantize.get("text_encoder_bytes_int8"),
        "text_encoder_compression": _ratio(quantize.get("text_encoder_bytes_fp16"), quantize.get("text_encoder_bytes_int8")),
    }
    if "peak_rss_above_baseline" in ref:  # CPU: the process's own baseline taken out
        out["rss_above_baseline_ratio"] = _ratio(comp.get("peak_rss_above_baseline"), ref["peak_rss_above_baseline"])
    return out


def rq_headline(rqvae: Mapping[str, Any], refiner: Mapping[str, Any], *, image_size: int | None = None) -> dict[str, Any]:
    """The RQ branch's headline: val quality before/after the refiner and the code budget.

    `image_size` (px, square) adds `compression_vs_rgb` = 24-bit RGB bits / bits per image.
    """
    lp = lpips_name(refiner, "_before")
    levels = len(rqvae["codebook_usage"])
    out = {
        "psnr_unrefined": refiner["psnr_before"],
        "psnr_refined": refiner["psnr_after"],
        "refiner_gain_db": refiner["psnr_after"] - refiner["psnr_before"],
        "ssim_unrefined": refiner["ssim_before"],
        "ssim_refined": refiner["ssim_after"],
        "bits_per_image": rqvae["bits_per_image"],
        "levels": levels,
        "codebook_usage_mean": sum(rqvae["codebook_usage"]) / levels,
        "perplexity_mean": sum(rqvae["perplexity"]) / levels,
        "rqvae_params": rqvae.get("params"),
        "refiner_params": refiner.get("params"),
    }
    if lp is not None:
        out[f"{lp}_unrefined"] = refiner[f"{lp}_before"]
        out[f"{lp}_refined"] = refiner[f"{lp}_after"]
    if image_size:
        out["compression_vs_rgb"] = RGB_BITS_PER_PIXEL * image_size**2 / rqvae["bits_per_image"]
    return out


def headline(metrics: Mapping[str, Mapping[str, Any]], *, rq_image_size: int | None = None) -> dict[str, dict[str, Any]]:
    """metrics/evaluate.json: {"sd": ..., "rq": ...}, each computed from its own branch only."""
    return {
        "sd": sd_headline(metrics["quantize"], metrics["benchmark"]),
        "rq": rq_headline(metrics["rqvae"], metrics["refiner"], image_size=rq_image_size),
    }


# ---------------------------------------------------------------------------- report sections


def _device_phrase(benchmark: Mapping[str, Any]) -> str:
    name, kind = str(benchmark.get("device", "unknown device")), benchmark.get("device_type", "")
    return f"{name} ({kind})" if kind and not name.lower().startswith(kind) else name


def _headline_section(head: Mapping[str, Mapping[str, Any]], metrics: Mapping[str, Mapping[str, Any]]) -> str:
    sd, rq = head["sd"], head["rq"]
    bench = metrics["benchmark"]
    peak_label = "peak allocated" if bench.get("device_type") == "cuda" else "peak RSS"
    sd_lp = next((k.removeprefix("drift_") for k in sd if k.startswith("drift_lpips")), "lpips")
    rq_lp = next((k.removesuffix("_unrefined") for k in rq if k.startswith("lpips") and k.endswith("_unrefined")), None)
    rows = [
        ["A", f"{peak_label}, compressed vs fp16",
         f"{fmt_bytes(sd['peak_mem_bytes_compressed'])} vs {fmt_bytes(sd['peak_mem_bytes_fp16'])} ({fmt_ratio(sd['peak_mem_ratio'])})"],
        ["A", "weights resident, compressed vs fp16",
         f"{fmt_bytes(sd['weights_bytes_compressed'])} vs {fmt_bytes(sd['weights_bytes_fp16'])} ({fmt_ratio(sd['weights_ratio'])})"],
        ["A", "UNet file, GGUF vs fp16",
         f"{fmt_bytes(sd['unet_bytes_gguf'])} vs {fmt_bytes(sd['unet_bytes_fp16'])} "
         f"({fmt_num(sd['unet_compression'], '.2f')}× smaller, {fmt_num(sd['unet_bpw'], '.2f')} bits/weight)"],
        ["A", "text encoder, int8 vs fp16",
         f"{fmt_bytes(sd['text_encoder_bytes_int8'])} vs {fmt_bytes(sd['text_encoder_bytes_fp16'])}"
         + (f" ({fmt_num(sd['text_encoder_compression'], '.2f')}× smaller)" if sd["text_encoder_compression"] else "")],
        ["A", "compressed images vs fp16 (same prompt + seed)",
         f"PSNR {fmt_db(sd['drift_psnr'])}, {sd_lp} {fmt_num(sd.get('drift_' + sd_lp), '.4f')}"],
        ["A", "seconds per image, compressed vs fp16",
         f"{fmt_num(sd['seconds_per_image_compressed'], '.2f')} s vs {fmt_num(sd['seconds_per_image_fp16'], '.2f')} s"],
        ["B", "val PSNR, RQ-VAE → + refiner",
         f"{fmt_db(rq['psnr_unrefined'])} → {fmt_db(rq['psnr_refined'])} ({fmt_db(rq['refiner_gain_db'], signed=True)})"],
        ["B", "val SSIM, RQ-VAE → + refiner", f"{fmt_num(rq['ssim_unrefined'], '.3f')} → {fmt_num(rq['ssim_refined'], '.3f')}"],
    ]
    if rq_lp:
        rows.append(["B", f"val {rq_lp}, RQ-VAE → + refiner (lower is better)",
                     f"{fmt_num(rq[rq_lp + '_unrefined'], '.4f')} → {fmt_num(rq[rq_lp + '_refined'], '.4f')}"])
    budget = f"{rq['bits_per_image']:,.0f} bits = {fmt_bytes(rq['bits_per_image'] / 8)} ({rq['levels']} levels)"
    if rq.get("compression_vs_rgb"):
        budget += f", {fmt_num(rq['compression_vs_rgb'], ',.0f')}× smaller than 8-bit RGB"
    rows.append(["B", "code per image", budget])
    return "## Headline\n\n" + markdown_table(["branch", "what", "value"], rows)


def _sd_bytes_tables(quant: Mapping[str, Any], bench: Mapping[str, Any]) -> str:
    te_after = quant.get("text_encoder_bytes_int8")
    stored = markdown_table(
        ["component", "before", "after", "smaller by", "how"],
        [
            ["UNet", fmt_bytes(quant["unet_bytes_fp16"]), fmt_bytes(quant["unet_bytes_gguf"]),
             fmt_ratio(_ratio(quant["unet_bytes_fp16"], quant["unet_bytes_gguf"])),
             f"GGUF, {fmt_num(quant['unet_bpw'], '.2f')} bits/weight, "
             f"{fmt_num(100 * quant['q4k_fraction'] if quant.get('q4k_fraction') is not None else None, '.1f')}% of weights Q4_K"],
            ["text encoder", fmt_bytes(quant.get("text_encoder_bytes_fp16")), fmt_bytes(te_after),
             fmt_ratio(_ratio(quant.get("text_encoder_bytes_fp16"), te_after)),
             "bitsandbytes int8" if te_after is not None else "kept fp16"],
        ],
    )
    configs = [c for c in bench.get("configs", []) if isinstance(bench.get(c, {}).get("resident_bytes"), dict)]
    components = list(dict.fromkeys(k for c in configs for k in bench[c]["resident_bytes"] if k != "total")) + ["total"]
    resident = markdown_table(
        ["component", *(f"`{c}`" for c in configs)],
        [[name, *(fmt_bytes(bench[c]["resident_bytes"].get(name)) for c in configs)] for name in components],
    )
    by_type = quant.get("unet_tensors_by_type") or {}
    types = markdown_table(
        ["GGUF type", "tensors", "weights", "bytes"],
        [[t, f"{v['tensors']:,}", f"{v['params']:,}", fmt_bytes(v["bytes"])] for t, v in by_type.items()],
    )
    rmse = (f"Relative RMS error of the dequantized UNet weights: mean {fmt_num(quant.get('rel_rmse_mean'), '.4f')}, "
            f"worst tensor {fmt_num(quant.get('rel_rmse_max'), '.4f')}; quantizing took {fmt_num(quant.get('quantize_seconds'), '.1f')} s.")
    return (f"Stored weights (quantize stage; before = fp16):\n\n{stored}\n\n{rmse}\n\n"
            + (f"UNet tensors by GGUF type:\n\n{types}\n\n" if by_type else "")
            + "Weights resident per component while generating (benchmark stage, exact tensor bytes"
            + (f"; the VAE of `{COMPRESSED}` is float32 on the CPU" if COMPRESSED in configs else "")
            + f"):\n\n{resident}")


def _mix_section(quant: Mapping[str, Any]) -> str:
    """The UNet's types along its blocks; under a byte budget the allocation, and (quantize.baselines)
    the allocation against uniform types and rule mixes at the same bytes."""
    parts = ["Bits per weight of each UNet tensor along the UNet (down → mid → up):",
             "![bits per weight along the UNet](quantize/bits_per_layer.png)"]
    alloc = quant.get("allocation")
    if alloc:
        shares = ", ".join(f"{t} {100 * v:.1f}%" for t, v in sorted(alloc.get("param_share", {}).items(), key=lambda kv: -kv[1]))
        parts.append(f"Types chosen per tensor under a budget of {fmt_bytes(quant.get('budget_bytes'))} from the measured "
                     f"sensitivity ({quant.get('sensitivity')}): {fmt_bytes(alloc.get('tensor_bytes'))} of tensors, "
                     f"{fmt_num(alloc.get('bpw'), '.3f')} bits/weight; share of weights: {shares}.")
    rows = []
    for label, row in (quant.get("baselines") or {}).items():
        if not isinstance(row, dict) or "baseline" not in row:
            continue
        base, mine = row["baseline"], row["allocation"]
        rows.append([BASELINE_LABELS.get(label, label.replace("_", " ")), fmt_bytes(row.get("budget_bytes")),
                     fmt_num(base.get("noise_rel_rmse"), ".4f"), fmt_num(mine.get("noise_rel_rmse"), ".4f"),
                     fmt_db(base.get("image_psnr_db")), fmt_db(mine.get("image_psnr_db"))])
    if rows:
        parts.append("At equal bytes, on prompts and a seed the sensitivities never saw (noise-prediction relative RMSE "
                     "vs the unquantized UNet, lower is better; image PSNR vs unquantized, higher is better):")
        parts.append(markdown_table(["baseline", "bytes", "baseline drift", "allocation drift", "baseline image", "allocation image"], rows))
    return "\n\n".join(parts)


def _lora_section(lora: Mapping[str, Any]) -> str:
    share = _ratio(lora.get("trainable_params"), lora.get("total_params"))
    rows = [
        ["trainable parameters", f"{lora['trainable_params']:,} of {lora['total_params']:,} ({fmt_num(None if share is None else 100 * share, '.2f')}%)"],
        ["optimizer steps", f"{lora.get('steps', '—')} at {fmt_num(lora.get('steps_per_s'), '.2f')} steps/s"],
        ["final loss", fmt_num(lora.get("final_loss"), ".4f")],
        ["peak memory: training / whole stage (incl. sample grid)",
         f"{fmt_bytes(lora.get('peak_mem_bytes_train'))} / {fmt_bytes(lora.get('peak_mem_bytes'))}"],
    ]
    return markdown_table(["LoRA fine-tune", "value"], rows)


def _rq_quality_table(refiner: Mapping[str, Any]) -> str:
    lp = lpips_name(refiner, "_before")
    rows = [
        ["PSNR (dB, higher is better)", fmt_db(refiner["psnr_before"]), fmt_db(refiner["psnr_after"]),
         fmt_db(refiner["psnr_after"] - refiner["psnr_before"], signed=True)],
        ["SSIM (higher is better)", fmt_num(refiner["ssim_before"], ".4f"), fmt_num(refiner["ssim_after"], ".4f"),
         fmt_num(refiner["ssim_after"] - refiner["ssim_before"], "+.4f")],
    ]
    if lp:
        rows.append([f"{lp} (lower is better)", fmt_num(refiner[f"{lp}_before"], ".4f"), fmt_num(refiner[f"{lp}_after"], ".4f"),
                     fmt_num(refiner[f"{lp}_after"] - refiner[f"{lp}_before"], "+.4f")])
    if "l1_before" in refiner:
        rows.append(["L1 (lower is better)", fmt_num(refiner["l1_before"], ".4f"), fmt_num(refiner["l1_after"], ".4f"),
                     fmt_num(refiner["l1_after"] - refiner["l1_before"], "+.4f")])
    return markdown_table(["val metric", "RQ-VAE decode", "+ refiner", "change"], rows)


def _rq_levels_table(rqvae: Mapping[str, Any]) -> str:
    levels = len(rqvae["codebook_usage"])
    bits_per_level = rqvae["bits_per_image"] / levels
    ssim_by = rqvae.get("ssim_by_levels") or [None] * levels
    rows = [
        [k, fmt_db(rqvae["psnr_by_levels"][k - 1]), fmt_num(ssim_by[k - 1], ".4f"), f"{bits_per_level * k:,.0f}",
         fmt_num(100 * rqvae["codebook_usage"][k - 1], ".1f", "%"), fmt_num(rqvae["perplexity"][k - 1], ".1f")]
        for k in range(1, levels + 1)
    ]
    return markdown_table(
        ["levels decoded", "val PSNR", "val SSIM", "bits / image", "codebook usage of level", "perplexity of level"], rows
    )


def _reproduce_section() -> str:
    return "\n".join([
        "## How to reproduce",
        "",
        "```bash",
        "dvc repro                        # the whole DAG with the profile in params.yaml (toy: CPU, minutes)",
        "dvc exp run -S profile=full      # LAPIS + SD 1.5 on a GPU (set data.lapis_path first)",
        "dvc exp run -S rqvae.levels=8    # a method change: re-runs only train_rqvae → train_refiner → evaluate",
        "dvc metrics show                 # every stage's numbers; evaluate's headline is metrics/evaluate.json",
        "dvc metrics diff                 # what the last change did to them",
        "mlflow ui --backend-store-uri sqlite:///mlflow.db   # runs, curves and pictures per stage",
        "```",
    ])


def build_report(
    metrics: Mapping[str, Mapping[str, Any]],
    head: Mapping[str, Mapping[str, Any]],
    *,
    profile: str,
    samples_caption: str = "",
    generation: str = "",
) -> str:
    """reports/report.md from the upstream metrics and the headline (`headline(metrics)`).

    `samples_caption` describes evaluate's own sample grid (prompts, seeds, steps, size);
    `generation` is the generation section (`squeezegen.generation.render.generation_markdown`).
    """
    from squeezegen.sd.benchmark_report import memory_table  # imports torch: kept out of `check_inputs`' path

    data, bench, rqvae, refiner = metrics["data"], metrics["benchmark"], metrics["rqvae"], metrics["refiner"]
    arch = bench.get("arch", "pipeline")
    settings = bench.get("settings", {})
    arch_note = ("an SD 1.5-architecture pipeline with random weights (real-scale memory; the pictures use the trained pipeline)"
                 if arch == "sd15" else "the trained pipeline (base + LoRA)")
    toy_note = ("\n\nThis is the **toy** profile: synthetic paintings and tiny models trained here, on a CPU, in minutes "
                "(the SD base too: fetch_base pretrains it on the toy train split). Its figures compare methods on "
                "the same small data; they are not SD 1.5's quality." if profile == "toy" else "")
    grid = rqvae.get("grid") or []
    grid_text = f"{grid[0]}×{grid[1]} codes × " if len(grid) == 2 else ""
    parts = [
        "# squeezegen report",
        f"Two ways to make image generation fit in little memory, on the same art data "
        f"({data.get('n_train', '?')} training and {data.get('n_val', '?')} validation images), profile `{profile}`:\n\n"
        f"- **A. Compressed Stable Diffusion**: LoRA fine-tune, UNet in GGUF Q4_K, CLIP text encoder in int8, "
        f"VAE on the CPU; memory measured on {_device_phrase(bench)} with {arch_note}, "
        f"{settings.get('size', '?')} px, {settings.get('steps', '?')} steps, batch 1.\n"
        f"- **B. A tiny generator of our own**: an RQ-VAE ({grid_text}{head['rq']['levels']} residual levels) "
        f"plus a refinement UNet, evaluated on the validation images.{toy_note}",
        _headline_section(head, metrics),
        "## A. Compressed Stable Diffusion",
        "### Memory, speed and drift per configuration",
        memory_table(bench, bench.get("lpips_metric", "lpips")).rstrip("\n"),
        "![peak memory per configuration](benchmark/memory.png)",
        "Peak memory against seconds per image, one point per configuration (lower left is better; squares are "
        "diffusers' own offloading, what a diffusers user would do instead):",
        "![peak memory vs seconds per image](benchmark/frontier.png)",
        "### Where the bytes are",
        _sd_bytes_tables(metrics["quantize"], bench),
        _mix_section(metrics["quantize"]),
        "### Samples: compressed vs uncompressed",
        f"![compressed vs uncompressed samples]({SD_SAMPLES})",
        samples_caption or "Same prompts and seeds in both rows.",
        "One image per benchmarked configuration (same prompt and seed):",
        "![one sample per configuration](benchmark/samples.png)",
        "### LoRA fine-tune",
        _lora_section(metrics["lora"]),
        "![base vs base + LoRA](lora/samples.png)",
        "## B. RQ-VAE + refiner",
        "### Validation quality before and after the refiner",
        _rq_quality_table(refiner),
        "### Quality by number of residual levels, and the codebooks",
        _rq_levels_table(rqvae),
        f"Perplexity is exp(entropy) of a level's code histogram on the validation set (at most the codebook size). "
        f"RQ-VAE: {fmt_num(rqvae.get('params'), ',.0f')} parameters; refiner: {fmt_num(refiner.get('params'), ',.0f')} parameters.",
        "![original, decodes with 1..L levels, refined](refiner/progressive.png)",
        *([generation] if generation else []),
        _reproduce_section(),
    ]
    return "\n\n".join(parts) + "\n"
