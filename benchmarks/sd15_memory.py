"""Peak memory of SD 1.5 per pipeline configuration, with random weights (no download).

Builds the SD 1.5-architecture pipeline from its configs (squeezegen.sd.sd15), writes it in fp16,
quantizes its UNet to GGUF under the Q4_K policy (params.yaml's `quantize:` section if there is
one, else the default policy) and its text encoder to int8, then runs every configuration —
fp16, q4k_unet, fp16_cuda_graph, q4k_unet_cuda_graph (the UNet step replayed from a CUDA graph),
q4k_unet_int8_clip, q4k_unet_int8_clip_cpu_vae, q4k_unet_int8_clip_tiled_vae,
lean, lean_cfg_batch, lean_tiny_vae (with CUDA graphs) and diffusers' own fp16_model_offload and
fp16_sequential_offload — at batch 1 and writes a JSON file with peak allocated/reserved (CUDA) or
peak RSS (CPU) per configuration, seconds per image, drift vs fp16, the attention kernels and the
residency trace, the device name, GGUF size and Q4_K fraction; plus <out>.png (one sample per
configuration) and <out>_frontier.png (peak memory against seconds per image), and prints a table.

    python benchmarks/sd15_memory.py                          # GPU: 512 px, 20 steps, guidance 7.5
    python benchmarks/sd15_memory.py --size 256 --steps 2     # CPU check (~15 min on 2 cores; --cpu-dtype fp32|bf16|auto)

Targets it checks (defined for CUDA at 512 px): q4k_unet_int8_clip_cpu_vae below 1.5 GB and 40% of
fp16's peak; `lean` at most 0.60 GB (6e8 bytes) peak allocated and 1.5 s per image, below
fp16_sequential_offload's peak at ≥ 3× its speed; q4k_unet at most 1.15× fp16's seconds per image
(reported for the eager q4k_unet and for q4k_unet_cuda_graph, against eager fp16 and against
fp16_cuda_graph, so the graph's gain on each side shows). Memory does not depend on the weights' values, so
random weights measure real-scale memory; the images are noise and the drift numbers only say
that the quantized pipeline computes what the fp16 one does on the same (random) weights.

Needs: torch, diffusers, transformers, bitsandbytes, gguf, safetensors, matplotlib, and
`squeezegen` importable (`pip install -e .`, or PYTHONPATH=src). No network.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src" / "squeezegen").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

TARGET = "q4k_unet_int8_clip_cpu_vae"
TARGET_PEAK_BYTES = 1.5e9
TARGET_RATIO = 0.40
LEAN_PEAK_BYTES, LEAN_SECONDS, LEAN_SPEEDUP_VS_SEQUENTIAL = 6e8, 1.5, 3.0  # the targets `lean` is held to
Q4K_SPEED_RATIO = 1.15  # q4k_unet seconds per image / fp16's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from squeezegen.sd.configurations import CONFIGS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512, help="image side in px (multiple of 8)")
    p.add_argument("--steps", type=int, default=20, help="DPM-Solver++ steps per image")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--repeats", type=int, default=1, help="timed images per configuration (after one warm-up)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and the sampling noise")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    p.add_argument("--compute-dtype", default="float16", choices=["float16", "bfloat16"], help="GPU compute dtype")
    p.add_argument("--cpu-dtype", default="auto", choices=["fp32", "bf16", "auto"],
                   help="CPU compute dtype (auto: bf16 where the CPU has AMX or AVX512-BF16)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), help="configurations")
    p.add_argument("--vae-tile-px", type=int, default=256, help="tiled VAE decode: tile side in px (multiple of 32)")
    p.add_argument("--lean-text-encoder", default="cpu", choices=["cpu", "device"], help="where lean* run the int8 text encoder")
    p.add_argument("--tiny-vae", default="config", help="lean_tiny_vae's AutoencoderTiny: config (random TAESD) | hub id | folder")
    p.add_argument("--params", default=str(ROOT / "params.yaml"), help="params.yaml whose `quantize:` policy to use")
    p.add_argument("--work-dir", default=None, help="where the ~3 GB of temporary model files go (default: $TMPDIR)")
    p.add_argument("--files", default=None, help="keep the SD 1.5 + quantized files in this folder and reuse them if present")
    p.add_argument("--out", default=None, help="JSON file to write (default: benchmarks/results/sd15_memory_<device>_<size>px.json)")
    args = p.parse_args(argv)
    if args.size % 8:
        p.error("--size must be a multiple of 8")
    if args.vae_tile_px <= 0 or args.vae_tile_px % 32:
        p.error("--vae-tile-px must be a positive multiple of 32")
    if "fp16" not in args.configs:
        p.error("--configs must include fp16 (the baseline of every ratio)")
    return args


def load_policy(params: str):
    """The `quantize:` policy of params.yaml, or the default Q4_K policy without one."""
    from squeezegen.quant.mix.policy import QuantPolicy

    if not Path(params).is_file():
        return QuantPolicy(), "default QuantPolicy()"
    from squeezegen.config import load_config
    from squeezegen.stages.quantize import quant_policy

    path = Path(params).resolve()
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path  # no machine paths for repo files
    return quant_policy(load_config(params).quantize), f"{shown} quantize:"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    from squeezegen.sd import benchmark as bench
    from squeezegen.sd import benchmark_report as bench_report
    from squeezegen.sd.sd15 import prepare_sd15_files

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy, policy_source = load_policy(args.params)
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        scratch = Path(args.files) if args.files else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="sd15_memory_", dir=args.work_dir))
        )
        saved_metrics = scratch / "quantize_metrics.json"
        if saved_metrics.is_file():
            print(f"[sd15_memory] reusing the SD 1.5 files in {scratch}", flush=True)
            base_dir, quant_dir = scratch / "base", scratch / "quantized"
            quantize_metrics = json.loads(saved_metrics.read_text())
        else:
            print(f"[sd15_memory] building + quantizing SD 1.5 (random weights) on {device} ...", flush=True)
            base_dir, quant_dir, quantize_metrics = prepare_sd15_files(scratch, policy=policy, seed=args.seed, device=device)
            if args.files:
                saved_metrics.write_text(json.dumps(quantize_metrics))
        prepare_seconds = time.perf_counter() - start
        print(f"[sd15_memory] prepared in {prepare_seconds:.0f} s; running {', '.join(args.configs)} ...", flush=True)
        job = bench.BenchmarkJob(
            base_dir=str(base_dir), lora_dir=None, quant_dir=str(quant_dir), device=device,
            compute_dtype=args.compute_dtype, seed=args.seed, steps=args.steps, size=args.size,
            guidance=args.guidance, repeats=args.repeats, vae_tile_px=args.vae_tile_px,
            lean_text_encoder=args.lean_text_encoder, tiny_vae=args.tiny_vae, cpu_dtype=args.cpu_dtype,
        )
        results = {}
        for name in args.configs:  # one at a time, so a run cut short still shows what it measured
            results.update(bench.run_configs([name], job))
            m = results[name]["metrics"]
            if "skipped" in m:
                print(f"[sd15_memory] {name}: skipped — {m['skipped']}", flush=True)
                continue
            print(f"[sd15_memory] {name}: peak {m['peak_bytes'] / 2**20:,.0f} MiB "
                  f"(reserved {(m['peak_reserved'] or 0) / 2**20:,.0f} MiB), {m['seconds_per_image']:.2f} s/image", flush=True)
    images = {name: result["images"] for name, result in results.items()}
    summary = bench.summarize(
        results, bench.image_drift(images), arch="sd15", job=job,
        extra={
            "torch": torch.__version__,
            "policy_source": policy_source,
            "unet_bytes_gguf": quantize_metrics["unet_bytes_gguf"],
            "unet_bytes_fp16": quantize_metrics["unet_bytes_fp16"],
            "q4k_fraction": quantize_metrics["q4k_fraction"],
            "unet_bpw": quantize_metrics["unet_bpw"],
            "text_encoder_bytes_fp16": quantize_metrics["text_encoder_bytes_fp16"],
            "text_encoder_bytes_int8": quantize_metrics["text_encoder_bytes_int8"],
            "quantize": quantize_metrics,
            "prepare_seconds": prepare_seconds,
            "total_seconds": time.perf_counter() - start,
        },
    )
    if TARGET in summary:
        target = summary[TARGET]
        summary["target"] = {
            "config": TARGET,
            "peak_bytes": target["peak_bytes"],
            "below_1_5_GB": target["peak_bytes"] < TARGET_PEAK_BYTES,
            "ratio_vs_fp16": target["peak_mem_ratio"],
            "below_40_percent": target["peak_mem_ratio"] < TARGET_RATIO,
            "applies": device.startswith("cuda") and args.size == 512,
        }

    summary["targets"] = lean_targets(summary, applies=device.startswith("cuda") and args.size == 512)

    from squeezegen.files import atomic_write_text

    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"sd15_memory_{device.split(':')[0]}_{args.size}px.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    bench_report.samples_strip(images, str(out.with_suffix(".png")))
    bench_report.frontier_chart(summary, str(out.with_name(out.stem + "_frontier.png")))

    print(bench_report.memory_table(summary))
    print(
        f"UNet GGUF {summary['unet_bytes_gguf'] / 1e9:.3f} GB (fp16 {summary['unet_bytes_fp16'] / 1e9:.3f} GB, "
        f"{summary['unet_bpw']:.2f} bits/weight, Q4_K fraction {summary['q4k_fraction']:.3f}); text encoder int8 "
        f"{(summary['text_encoder_bytes_int8'] or 0) / 1e9:.3f} GB (fp16 {summary['text_encoder_bytes_fp16'] / 1e9:.3f} GB)"
    )
    if "target" in summary:
        t = summary["target"]
        print(
            f"target {TARGET}: peak {t['peak_bytes'] / 1e9:.3f} GB (< 1.5 GB: {t['below_1_5_GB']}), "
            f"{t['ratio_vs_fp16']:.1%} of fp16 (< 40%: {t['below_40_percent']})"
            + ("" if t["applies"] else "  [target is defined for CUDA at 512 px]")
        )
    for name, t in summary["targets"].items():
        print(f"target {name}: {t}")
    print(f"wrote {out}, {out.with_suffix('.png').name}, {out.stem}_frontier.png ({summary['total_seconds']:.0f} s in all)")
    return summary


def lean_targets(summary: dict, *, applies: bool) -> dict:
    """The `lean` targets, each with the figures it compares (None where a configuration did not run)."""
    def ran(name: str) -> dict | None:
        m = summary.get(name)
        return m if m and "skipped" not in m else None

    lean, seq = ran("lean"), ran("fp16_sequential_offload")
    out: dict = {"applies": applies}
    if lean:
        out["lean"] = {"peak_bytes": lean["peak_bytes"], "seconds_per_image": lean["seconds_per_image"],
                       "peak_at_most_0_60_GB": lean["peak_bytes"] <= LEAN_PEAK_BYTES,
                       "at_most_1_5_s": lean["seconds_per_image"] <= LEAN_SECONDS}
    if lean and seq:
        speedup = seq["seconds_per_image"] / lean["seconds_per_image"]
        out["lean_vs_sequential_offload"] = {"peak_below": lean["peak_bytes"] < seq["peak_bytes"], "speedup": speedup,
                                             "speedup_at_least_3x": speedup >= LEAN_SPEEDUP_VS_SEQUENTIAL}
    for q4k_name, fp16_name in (("q4k_unet", "fp16"), ("q4k_unet_cuda_graph", "fp16"), ("q4k_unet_cuda_graph", "fp16_cuda_graph")):
        q4k, fp16 = ran(q4k_name), ran(fp16_name)
        if q4k and fp16:
            ratio = q4k["seconds_per_image"] / fp16["seconds_per_image"]
            key = "q4k_unet_speed" if (q4k_name, fp16_name) == ("q4k_unet", "fp16") else f"{q4k_name}_vs_{fp16_name}_speed"
            out[key] = {"ratio": ratio, "at_most_1_15x": ratio <= Q4K_SPEED_RATIO}
    return out


if __name__ == "__main__":
    main()
