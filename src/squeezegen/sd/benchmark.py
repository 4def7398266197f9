"""Benchmark the memory configurations: peak memory, seconds per image and drift from fp16.

Each configuration is built, warmed up with one image, then timed on `repeats` images (batch 1,
one prompt/seed each; seeds and initial noise are the same for every configuration). Peaks are
measured around the timed images only (see `configurations.generate_measured`), after the previous
configuration was freed.

Skips: diffusers' offloading is built for an accelerator. On a CPU run an offload configuration that
raises is recorded as skipped, with the error as its reason, instead of failing the stage; on a
GPU every error propagates.

Isolation: on a CPU each configuration runs in its own child process (forked from a
forkserver that has imported torch and diffusers once), because glibc keeps freed heap pages
mapped, so a second configuration in the same process would inherit the first one's resident
set. On CUDA the caching allocator's counters are exact and `empty_cache()` returns its blocks,
so configurations run one after another in this process.
"""

from __future__ import annotations

import concurrent.futures
import io
import multiprocessing
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from squeezegen.data.captions import GENRES, PROMPT_SCORE, STYLES, caption_for, rated_caption
from squeezegen.memory.probes import device_name, free_memory
from squeezegen.quant.codecs.q4k import q4k_decoder
from squeezegen.sd.configurations import (
    CONFIGS,
    DEFAULT_TILE_PX,
    OFFLOAD_PLACEMENTS,
    SPECS,
    build_pipeline,
    generate_measured,
)

REFERENCE = "fp16"
WARMUP_SEED_OFFSET = 10_000  # the warm-up image's seed: far from the timed ones
# Imported once by the forkserver, so each configuration's child starts without import time
# (diffusers and transformers import their model classes lazily, on first use).
PRELOAD = (
    "torch",
    "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
    "diffusers.models.autoencoders.autoencoder_kl",
    "diffusers.models.unets.unet_2d_condition",
    "transformers.models.clip.modeling_clip",
    "peft",
    "bitsandbytes",
    "squeezegen.sd.benchmark",
    "squeezegen.quant.gguf.unet_loader",
    "squeezegen.quant.int8",
    "squeezegen.sd.lean",
    "squeezegen.sd.residency",
    "squeezegen.sd.cuda_graph",
    "accelerate.hooks",
)


def benchmark_prompts(n: int, *, score: float | None = PROMPT_SCORE) -> list[str]:
    """`n` LAPIS-style prompts asking for `score`, fixed (style and genre stepped through their lists)."""
    return [rated_caption(caption_for(STYLES[(7 * i) % len(STYLES)], GENRES[i % len(GENRES)]), score) for i in range(n)]


@dataclass(frozen=True, kw_only=True)
class BenchmarkJob:
    """Everything one configuration's run needs (picklable, for the child process)."""

    base_dir: str
    lora_dir: str | None
    quant_dir: str | None
    device: str
    compute_dtype: str
    seed: int
    steps: int
    size: int
    guidance: float
    repeats: int
    vae_tile_px: int = DEFAULT_TILE_PX
    lean_text_encoder: str = "cpu"
    tiny_vae: str = "config"
    cpu_dtype: str = "fp32"

    def timed_inputs(self) -> tuple[list[str], list[int]]:
        prompts = benchmark_prompts(self.repeats)
        return prompts, [self.seed + i for i in range(self.repeats)]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run_config(config_name: str, job: BenchmarkJob) -> dict[str, Any]:
    """Build, warm up and time one configuration in this process.

    Returns {"metrics": JSON-ready numbers, "images": PNG bytes (warm-up first, then timed)}; for a
    configuration skipped on a CPU (see the module doc), {"metrics": {"skipped": reason, ...}, "images": []}.
    """
    device = torch.device(job.device)
    spec = SPECS[config_name]
    try:
        return _run_config(config_name, job)
    except Exception as err:
        if device.type != "cpu" or spec.placement not in OFFLOAD_PLACEMENTS:
            raise
        free_memory(device)
        where = traceback.extract_tb(err.__traceback__)[-1]
        reason = (f"diffusers' {spec.placement.replace('_', ' ')} failed with the CPU as its execution device: "
                  f"{type(err).__name__} in {Path(where.filename).parent.name}/{Path(where.filename).name}:{where.name} "
                  f"({str(err).splitlines()[0][:100]})")
        return {"metrics": {"skipped": reason, **_spec_fields(spec, device)}, "images": []}


def _spec_fields(spec: Any, device: torch.device) -> dict[str, Any]:
    return {"placement": spec.placement, "cfg": spec.cfg, "attention": spec.attention, "vae": spec.vae,
            "cuda_graph": spec.cuda_graph, "device": str(device), "device_name": device_name(device)}


def _run_config(config_name: str, job: BenchmarkJob) -> dict[str, Any]:
    from squeezegen.sd.lean import attention_processors, record_sdpa_backends

    device = torch.device(job.device)
    free_memory(device)
    bundle = build_pipeline(
        config_name,
        base_dir=job.base_dir,
        lora_dir=job.lora_dir,
        quant_dir=job.quant_dir,
        device=device,
        compute_dtype=job.compute_dtype,
        cpu_dtype=job.cpu_dtype,
        vae_tile_px=job.vae_tile_px,
        lean_text_encoder=job.lean_text_encoder,
        tiny_vae=job.tiny_vae,
        seed=job.seed,
    )
    resident = bundle.resident_bytes()
    prompts, seeds = job.timed_inputs()
    common = dict(steps=job.steps, size=job.size, guidance=job.guidance)
    with record_sdpa_backends() as sdpa_calls:  # which attention kernels ran (warm-up only: not timed)
        warmup = generate_measured(bundle, prompts[:1], [job.seed + WARMUP_SEED_OFFSET], **common)
    if bundle.residency is not None:
        bundle.residency.trace.clear()  # the trace of the timed images only
    timed = generate_measured(bundle, prompts, seeds, **common)
    peak = timed.peak()
    load = bundle.load_peak
    trace = bundle.residency.trace.as_dicts() if bundle.residency is not None else None
    metrics = {
        "device_name": peak["device_name"],
        "device": str(device),
        "compute_dtype": str(bundle.dtype).removeprefix("torch."),
        "vae_device": str(bundle.vae_device),
        "vae_dtype": str(bundle.vae_dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),  # intra-op threads the CPU work ran on
        **{k: v for k, v in _spec_fields(bundle.spec, device).items() if k not in ("device", "device_name")},
        "attention_processors": attention_processors(bundle.pipe),
        # per F.scaled_dot_product_attention call of one image; under a CUDA graph only the warm-up and
        # capture calls reach Python (replays bypass it), so the counts are smaller, the kernels the same
        "sdpa_kernels": dict(sdpa_calls),
        "vae_tile_px": job.vae_tile_px if bundle.spec.vae == "tiled" else None,
        "text_encoder_on": ("cpu" if job.lean_text_encoder == "cpu" else str(device)) if bundle.spec.placement == "phase" else None,
        # the schedule as it ran (timings apart: they go to perf, so two runs' traces compare equal)
        "residency_trace": [{k: v for k, v in e.items() if k != "move_seconds"} for e in trace] if trace is not None else None,
        "residency_move_seconds": sum(e["move_seconds"] for e in trace) if trace is not None else None,
        "notes": bundle.notes,
        # captures / replays / eager calls of the UNet step's CUDA graph (None: no graph in this run)
        "cuda_graph_stats": bundle.cuda_graph.stats.as_dict() if bundle.cuda_graph is not None else None,
        "peak_bytes": peak["peak_bytes"],
        "peak_allocated": peak["peak_allocated"],
        "peak_reserved": peak["peak_reserved"],
        "peak_rss": peak["peak_rss"],
        "baseline_rss": load.start_rss if load else None,  # process RSS before loading anything
        "allocated_before_load": load.start_allocated if load else None,  # CUDA: left over from before (should be ~0)
        "rss_method": peak["rss_method"],
        "load_peak_bytes": load.peak_bytes if load else None,
        "load_seconds": bundle.load_seconds,
        "resident_bytes": {name: entry["bytes"] for name, entry in resident.items()},
        "weights_bytes": resident["total"]["bytes"],
        # Weights kept on the device between images: the CPU VAE's fp32 weights, and everything an
        # offloading configuration parks on the CPU, count in weights_bytes but not here.
        "device_weights_bytes": 0 if bundle.spec.placement != "resident" and device.type != "cpu" else sum(
            n for where, n in resident["total"]["by_device"].items() if torch.device(where).type == device.type
        ),
        "phases": {
            name: {key: p[key] for key in ("peak_bytes", "peak_allocated", "peak_reserved", "peak_rss")}
            for name, p in peak["phases"].items()
        },
        "warmup_seconds": warmup.seconds[0],
        "seconds_per_image": float(np.mean(timed.seconds)),
        "seconds": timed.seconds,
    }
    if metrics["peak_rss"] is not None and metrics["baseline_rss"] is not None:
        metrics["peak_rss_above_baseline"] = metrics["peak_rss"] - metrics["baseline_rss"]
    images = [_png(im) for im in (*warmup.images, *timed.images)]
    del bundle, warmup, timed
    free_memory(device)
    return {"metrics": metrics, "images": images}


def _isolated_executor() -> concurrent.futures.ProcessPoolExecutor:
    """A one-process pool forked from a forkserver that preloaded torch + diffusers."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx)


def run_configs(configs: Sequence[str], job: BenchmarkJob, *, isolate: bool | None = None) -> dict[str, dict]:
    """`run_config` for each configuration, in order; `isolate` (default: on a CPU) runs each
    in a fresh child process (see the module doc). Results keyed by configuration."""
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown configurations {unknown}; known: {CONFIGS}")
    isolate = torch.device(job.device).type == "cpu" if isolate is None else isolate
    results = {}
    for name in configs:
        if isolate:
            with _isolated_executor() as pool:  # a new child per configuration
                results[name] = pool.submit(run_config, name, job).result()
        else:
            results[name] = run_config(name, job)
    return results


def _to_tensor(png: bytes) -> torch.Tensor:
    array = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W) in [0, 1]


def image_drift(
    images: dict[str, list[bytes]], *, reference: str = REFERENCE, lpips_net: torch.nn.Module | None = None,
    lpips_name: str = "lpips",
) -> dict[str, dict[str, float]]:
    """Per configuration: mean PSNR (dB, capped at 100 for identical images) and LPIPS of its
    images against the reference configuration's images at the same prompt and seed.

    Also, under `reference`: the same numbers between two of its own images that share a prompt
    but not a seed (warm-up vs first timed image) — the scale drift should be read against.
    """
    from squeezegen.image_metrics import lpips_distance, psnr

    def compare(a: list[bytes], b: list[bytes]) -> dict[str, float]:
        x = torch.cat([_to_tensor(p) for p in a])  # (N, 3, H, W)
        y = torch.cat([_to_tensor(p) for p in b])
        out = {"psnr": float(psnr(x, y, value_range=(0.0, 1.0)).mean())}
        if lpips_net is not None:
            with torch.no_grad():
                out[lpips_name] = float(lpips_distance(lpips_net, 2 * x - 1, 2 * y - 1).mean())
        return out

    ref = images[reference]
    drift = {name: compare(imgs, ref) for name, imgs in images.items() if name != reference and imgs}
    if len(ref) >= 2:
        drift[reference] = {f"{k}_other_seed": v for k, v in compare(ref[:1], ref[1:2]).items()}
    return drift


def summarize(
    results: dict[str, dict], drift: dict[str, dict[str, float]], *, arch: str, job: BenchmarkJob,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """metrics/benchmark.json: one entry per configuration (+ ratios vs fp16 and drift), plus
    the device, architecture and settings."""
    ref = results[REFERENCE]["metrics"]
    out: dict[str, Any] = {}
    for name, result in results.items():
        m = dict(result["metrics"])
        if "skipped" in m:
            out[name] = m
            continue
        m.update(drift.get(name, {}))
        m["peak_mem_ratio"] = m["peak_bytes"] / ref["peak_bytes"] if ref["peak_bytes"] else None
        m["weights_ratio"] = m["weights_bytes"] / ref["weights_bytes"] if ref["weights_bytes"] else None
        if "peak_rss_above_baseline" in m and ref.get("peak_rss_above_baseline"):
            m["rss_above_baseline_ratio"] = m["peak_rss_above_baseline"] / ref["peak_rss_above_baseline"]
        m["speed_ratio"] = m["seconds_per_image"] / ref["seconds_per_image"] if ref["seconds_per_image"] else None
        out[name] = m
    out.update(
        device=ref["device_name"],
        device_type=torch.device(job.device).type,
        arch=arch,
        peak_metric="peak_allocated" if torch.device(job.device).type == "cuda" else "peak_rss",
        q4k_decoder=q4k_decoder(torch.device(job.device)),  # the same for every configuration of a run
        settings={k: v for k, v in asdict(job).items() if k not in ("base_dir", "lora_dir", "quant_dir")},
        configs=list(results),
        skipped={name: r["metrics"]["skipped"] for name, r in results.items() if "skipped" in r["metrics"]},
    )
    out.update(extra or {})
    return out
