"""stable-diffusion.cpp runs `squeezegen export --format sdcpp`: the toy's export and the SD 1.5 architecture's.

Needs stable-diffusion-cpp-python, which builds sd.cpp from source (~8 min on 2 cores) and so is
not in requirements.lock; install it next to the project's environment, e.g.

    pip install --no-deps --target /opt/sdcpp stable-diffusion-cpp-python
    PYTHONPATH=/opt/sdcpp python benchmarks/sdcpp_export.py [--size 256 --steps 4]

1. toy: the toy pipeline is exported and handed to sd.cpp; its answer is recorded (it refuses:
   sd.cpp builds SD 1.x from fixed hyper-parameters and detects the version by a 768-wide CLIP).
2. sd15: the SD 1.5-architecture pipeline (random weights, built from configs) is exported and
   sd.cpp draws one image in a child process (load and sampling seconds, peak RSS = VmHWM).
   Our pipeline draws the same picture in four child processes of its own: uncompressed (the
   `fp16` configuration) and compressed (`q4k_unet_int8_clip_cpu_vae`, from the quantize stage's
   files made here), each computing in fp32 and in bf16 (`benchmark.cpu_dtype`; bf16 is fast only
   on CPUs with AMX or AVX512-BF16). The text encoder, the UNet loop and the VAE decode are timed
   apart. All start from
   sd.cpp's initial noise (its torch-CUDA-compatible Philox generator, reproduced below), take
   the same Euler sigmas (ours, passed to sd.cpp) and the same text tokens (an empty prompt:
   BOS + EOS padding in CLIP's real vocabulary, which sd.cpp embeds), with guidance 1. The PSNR
   between the images is the check; sd.cpp with the next seed shows how far unrelated pictures are.

Writes benchmarks/results/sdcpp_export.json (speed and memory under `perf`) and sdcpp_export.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
TOY_REFUSED = (
    "sd.cpp detects SD 1.x only from a 768-wide CLIP token embedding (model.cpp get_sd_version; the toy's "
    "CLIP is 256 wide), so it logs 'get sd version from file failed' and the binding then crashes; and "
    "its SD 1.x UNet is built from fixed hyper-parameters (unet.hpp: 320 channels, mult 1,2,4,4, 2 resnets "
    "per block, 768-wide context), so no toy tensor (32/64/64 channels, 1 resnet per block) would match its shape."
)
EMPTY_PROMPT_IDS = [49406] + [49407] * 76  # CLIP BOS, then EOS as padding (sd.cpp's SD 1.x tokenizer)
INSTALL_HINT = ("stable-diffusion-cpp-python is not installed: pip install --no-deps --target /opt/sdcpp "
                "stable-diffusion-cpp-python==0.4.7 (builds sd.cpp, 4-8 min), then run with PYTHONPATH=/opt/sdcpp")


def sdcpp_missing() -> str | None:
    """Why sd.cpp cannot run here (the install hint), or None when its binding is importable."""
    import importlib.util

    return INSTALL_HINT if importlib.util.find_spec("stable_diffusion_cpp") is None else None


def philox_randn(seed: int, n: int, offset: int = 0) -> np.ndarray:
    """sd.cpp's `rng_type=cuda` normal draws (Philox 4x32-10 + Box-Muller, as torch on CUDA): float32 [n]."""
    m0, m1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    c0, c1 = np.full(n, offset, np.uint32), np.zeros(n, np.uint32)
    c2, c3 = np.arange(n, dtype=np.uint32), np.zeros(n, np.uint32)
    k0, k1 = np.full(n, seed & 0xFFFFFFFF, np.uint32), np.full(n, seed >> 32, np.uint32)
    for round_ in range(10):
        if round_:
            k0 += np.uint32(0x9E3779B9)  # wraps, as uint32 arithmetic does in C
            k1 += np.uint32(0xBB67AE85)
        v1, v2 = c0.astype(np.uint64) * m0, c2.astype(np.uint64) * m1
        c0, c1, c2, c3 = (
            (v2 >> np.uint64(32)).astype(np.uint32) ^ c1 ^ k0,
            v2.astype(np.uint32),
            (v1 >> np.uint64(32)).astype(np.uint32) ^ c3 ^ k1,
            v1.astype(np.uint32),
        )
    inv = np.float32(2.3283064e-10)
    inv_2pi = np.float32(2.3283064e-10 * 6.2831855)
    u = c0.astype(np.float32) * inv + inv / 2
    v = c1.astype(np.float32) * inv_2pi + inv_2pi / 2
    return (np.sqrt(np.float32(-2.0) * np.log(u)) * np.sin(v)).astype(np.float32)


def _vm_hwm() -> int:
    """This process's peak resident set (bytes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


# --- child processes (each measures only itself) --------------------------------------------------


def sd_system_info() -> str:
    """sd.cpp's own build summary (SIMD flags, thread count), or why it is unavailable."""
    try:
        from stable_diffusion_cpp import stable_diffusion_cpp as lib

        return " ".join(lib.sd_get_system_info().decode().split())  # one line: the result keeps a single log line
    except Exception as err:  # older bindings lack the call; the run goes on without it
        return f"unavailable ({type(err).__name__})"


def _child_sdcpp(job: dict) -> dict:
    from stable_diffusion_cpp import StableDiffusion

    print(f"[sdcpp] system info: {sd_system_info()}", flush=True)
    start = time.perf_counter()
    try:
        sd = StableDiffusion(model_path=job["model"], n_threads=job["threads"], rng_type="cuda", verbose=True)
    except Exception as err:  # sd.cpp reports a model it cannot load as an exception with its log above
        return {"loaded": False, "error": repr(err), "peak_rss": _vm_hwm()}
    load_seconds = time.perf_counter() - start
    start = time.perf_counter()
    images = sd.generate_image(
        prompt="", negative_prompt="", width=job["size"], height=job["size"], cfg_scale=1.0,
        sample_method="euler", sigmas=job["sigmas"], sample_steps=job["steps"], seed=job["seed"],
    )  # fmt: skip
    images[0].save(job["png"])
    return {"loaded": True, "load_seconds": load_seconds, "generate_seconds": time.perf_counter() - start,
            "peak_rss": _vm_hwm()}  # fmt: skip


def _child_ours(job: dict) -> dict:
    """Our pipeline in configuration job["config"] on the CPU, computing in job["cpu_dtype"]."""
    import torch

    from squeezegen.quant.codecs.q4k import q4k_decoder
    from squeezegen.sd.configurations import build_pipeline

    torch.set_num_threads(job["threads"])
    start = time.perf_counter()
    bundle = build_pipeline(job["config"], base_dir=job["base"], quant_dir=job.get("quant"), device="cpu",
                            cpu_dtype=job["cpu_dtype"])
    pipe = bundle.pipe
    pipe.scheduler = _euler(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load_seconds = time.perf_counter() - start
    h = job["size"] // 8
    seconds = {}
    with torch.inference_mode():
        start = time.perf_counter()
        embeds = pipe.text_encoder(torch.tensor([EMPTY_PROMPT_IDS]))[0].to(bundle.dtype)  # (1, 77, 768)
        seconds["text_encoder"] = time.perf_counter() - start
        noise = torch.from_numpy(philox_randn(job["seed"], 4 * h * h)).reshape(1, 4, h, h)  # ggml's order = torch's
        start = time.perf_counter()
        latents = pipe(prompt_embeds=embeds, guidance_scale=1.0, num_inference_steps=job["steps"],
                       latents=noise.to(bundle.dtype), height=job["size"], width=job["size"], output_type="latent").images
        seconds["sampling"] = time.perf_counter() - start
        start = time.perf_counter()
        latents = latents.to(bundle.vae_dtype) / pipe.vae.config.scaling_factor
        pixels = pipe.vae.decode(latents, return_dict=False)[0].float()
        seconds["vae_decode"] = time.perf_counter() - start
    pipe.image_processor.postprocess(pixels, output_type="pil")[0].save(job["png"])
    return {"load_seconds": load_seconds, "generate_seconds": sum(seconds.values()), "seconds": seconds,
            "peak_rss": _vm_hwm(), "compute_dtype": str(bundle.dtype).removeprefix("torch."),
            "vae_dtype": str(bundle.vae_dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
            "q4k_decoder": q4k_decoder(torch.device("cpu")) if job["config"] != "fp16" else None}


def _euler(config):
    """diffusers' Euler with whole-number timesteps, whose sigmas sd.cpp's schedule maps back to the same t."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(config, timestep_spacing="trailing")


def run_child(kind: str, job: dict) -> tuple[dict, str, float]:
    """Run `kind` (sdcpp | ours) in a fresh process: (its result, its log, wall seconds)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, json.dumps(job)], capture_output=True, text=True, env=os.environ
    )
    log = proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    ended = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
    result = json.loads(lines[-1][7:]) if lines else {"loaded": False, "error": f"the process ended without a result ({ended})"}
    return result, log, time.perf_counter() - start


def _log_lines(log: str, words: tuple[str, ...], work: Path, *, case: bool = True, most: int = 24) -> list[str]:
    def hit(line: str) -> bool:
        return any(w in line for w in words) if case else any(w in line.lower() for w in words)

    lines = [line.strip()[:300] for line in log.splitlines() if hit(line)][:most]
    return [line.replace(str(work), "<work>") for line in lines]  # no machine paths in results


def _system_info(log: str) -> str | None:
    return next((line.split(": ", 1)[1] for line in log.splitlines() if line.startswith("[sdcpp] system info: ")), None)


# --- the two runs -------------------------------------------------------------------------------


def run_toy(work: Path, *, threads: int = 2) -> dict:
    """Export the toy pipeline and ask sd.cpp to load it; returns what happened."""
    from squeezegen.quant.gguf.export import export_sdcpp
    from squeezegen.sd.tiny import build_tiny_pipeline

    build_tiny_pipeline(seed=0).save_pretrained(work / "toy_base")
    summary = export_sdcpp(work / "toy.gguf", base_dir=work / "toy_base", progress=False)
    job = {"model": str(work / "toy.gguf"), "threads": threads, "size": 64, "steps": 2, "seed": 0,
           "sigmas": "14.6,1.0,0.0", "png": str(work / "toy_sdcpp.png")}  # fmt: skip
    result, log, _ = run_child("sdcpp", job)
    return {
        "export": summary | {"path": "toy.gguf"},
        "sdcpp": result,
        "sdcpp_log": _log_lines(log, ("ERROR", "WARN", "version", "failed"), work),
        "why": TOY_REFUSED,
    }


# label → (our configuration, CPU dtype); "fp32" is the reference every PSNR is taken against
OURS = {"fp32": ("fp16", "fp32"), "bf16": ("fp16", "bf16"),
        "compressed_fp32": ("q4k_unet_int8_clip_cpu_vae", "fp32"), "compressed": ("q4k_unet_int8_clip_cpu_vae", "bf16")}
TARGETS = {"compressed_vs_fp32_time": 0.5, "compressed_vs_sdcpp_time": 0.8, "bf16_psnr_db": 35.0, "compressed_psnr_db": 30.0}


def run_sd15(work: Path, *, size: int = 256, steps: int = 4, seed: int = 0, threads: int = 2, keep_files: bool = True) -> dict:
    """Export the SD 1.5-architecture pipeline; sd.cpp and our pipeline (fp32, compressed) each draw one image."""
    from PIL import Image

    from squeezegen.quant.gguf.export import export_sdcpp
    from squeezegen.quant.mix.policy import QuantPolicy
    from squeezegen.quant.pipeline import quantize_pipeline
    from squeezegen.sd.sd15 import SD15_SCHEDULER_CONFIG, save_sd15_pipeline

    perf: dict = {}
    start = time.perf_counter()
    base = save_sd15_pipeline(work / "sd15_base", seed=0)  # fp16 safetensors, random weights
    perf["build_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    summary = export_sdcpp(work / "sd15.gguf", base_dir=base, progress=False)
    perf["export_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    quantize_pipeline(base, work / "quantized", policy=QuantPolicy(), device="cpu", progress=False)  # our files
    perf["quantize_seconds"] = time.perf_counter() - start

    euler = _euler(SD15_SCHEDULER_CONFIG)
    euler.set_timesteps(steps)
    sigmas = ",".join(f"{s:.6f}" for s in euler.sigmas.tolist())  # steps + 1 values, the last 0
    common = {"threads": threads, "size": size, "steps": steps, "sigmas": sigmas, "seed": seed}
    model = str(work / "sd15.gguf")
    if missing := sdcpp_missing():
        sdcpp, sdcpp_log = {"loaded": False, "error": missing}, ""
    else:
        sdcpp, sdcpp_log, wall = run_child("sdcpp", {**common, "model": model, "png": str(work / "sdcpp.png")})
        perf["sdcpp"] = {k: v for k, v in sdcpp.items() if k not in ("loaded", "error")} | {"wall_seconds": wall}
    for label, (config, cpu_dtype) in OURS.items():
        job = {**common, "config": config, "cpu_dtype": cpu_dtype, "base": str(base), "quant": str(work / "quantized"),
               "png": str(work / f"{label}.png")}
        ours, ours_log, wall = run_child("ours", job)
        perf[f"ours_{label}"] = ours | {"wall_seconds": wall}
        if "error" in ours:
            perf[f"ours_{label}"]["log_tail"] = ours_log[-1500:].replace(str(work), "<work>")
    if not missing:
        run_child("sdcpp", {**common, "model": model, "seed": seed + 1, "png": str(work / "sdcpp_next_seed.png")})
    result = {
        "settings": {"size": size, "steps": steps, "seed": seed, "sampler": "euler", "sigmas": sigmas,
                     "prompt": "", "cfg_scale": 1.0, "threads": threads, "ours": OURS, "sdcpp_system_info": _system_info(sdcpp_log),
                     "weights": "random (sd15.build_sd15_pipeline, seed 0)"},
        "export": summary | {"path": "sd15.gguf"},
        "sdcpp": {"loaded": sdcpp.get("loaded", False), **({"error": sdcpp["error"]} if "error" in sdcpp else {})},
        # sd.cpp's log lines carry no level prefix in the child's output: match the words instead
        "sdcpp_log": _log_lines(sdcpp_log, ("error", "warn", "fail", "version", "total params memory", "completed",
                                            "taking", "sampling"), work, case=False),
        "perf": perf,
    }  # fmt: skip
    images = {name: np.asarray(Image.open(work / f"{name}.png").convert("RGB"), dtype=np.float64)
              for name in ("sdcpp", "sdcpp_next_seed", *OURS) if (work / f"{name}.png").is_file()}
    result["compare"] = compare_images(images)
    if keep_files and all(name in images for name in ("sdcpp", "sdcpp_next_seed", *OURS)):
        _picture(images, RESULTS / "sdcpp_export.png")
    result["targets"] = targets(result)
    return result


def compare_images(images: dict[str, np.ndarray]) -> dict:
    """PSNRs between the images that exist: ours against our fp32 image, sd.cpp's against ours."""
    out = {}
    if "fp32" not in images:
        return out
    for label in OURS:
        if label != "fp32" and label in images:
            out[f"psnr_ours_{label}_vs_ours_fp32_db"] = _psnr(images[label], images["fp32"])
    if "sdcpp" in images:
        out |= {f"psnr_sdcpp_vs_ours_{label}_db": _psnr(images["sdcpp"], images[label]) for label in OURS if label in images}
        out["mean_abs_diff_sdcpp_vs_ours_fp32_0_255"] = float(np.abs(images["sdcpp"] - images["fp32"]).mean())
    if "sdcpp_next_seed" in images:
        out["psnr_sdcpp_next_seed_vs_ours_fp32_db"] = _psnr(images["sdcpp_next_seed"], images["fp32"])
    return out


def targets(result: dict) -> dict:
    """The CPU targets, each with the figures it compares (None where a run or an image is missing)."""
    perf, compare = result["perf"], result.get("compare", {})

    def seconds(name: str) -> float | None:
        return perf.get(name, {}).get("generate_seconds")

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    ours, fp32, sdcpp = seconds("ours_compressed"), seconds("ours_fp32"), seconds("sdcpp")
    rss, sdcpp_rss = perf.get("ours_compressed", {}).get("peak_rss"), perf.get("sdcpp", {}).get("peak_rss")
    out = {"compressed_vs_fp32_time": ratio(ours, fp32), "compressed_vs_sdcpp_time": ratio(ours, sdcpp),
           "compressed_vs_sdcpp_peak_rss": ratio(rss, sdcpp_rss),
           "bf16_psnr_db": compare.get("psnr_ours_bf16_vs_ours_fp32_db"),
           "compressed_psnr_db": compare.get("psnr_ours_compressed_vs_ours_fp32_db")}
    met = {"compressed_vs_fp32_time": lambda v: v <= TARGETS["compressed_vs_fp32_time"],
           "compressed_vs_sdcpp_time": lambda v: v <= TARGETS["compressed_vs_sdcpp_time"],
           "compressed_vs_sdcpp_peak_rss": lambda v: v <= 1.0,
           "bf16_psnr_db": lambda v: v >= TARGETS["bf16_psnr_db"],
           "compressed_psnr_db": lambda v: v >= TARGETS["compressed_psnr_db"]}
    return {name: {"value": value, "met": None if value is None else bool(met[name](value))} for name, value in out.items()}


def markdown(result: dict) -> str:
    """One row per run: seconds (text encoder, UNet loop, VAE decode), peak RSS, PSNR vs our fp32 image."""
    s, perf, compare = result["settings"], result["perf"], result.get("compare", {})
    lines = [f"SD 1.5 architecture (random weights), {s['size']} px, {s['steps']} Euler steps, guidance 1, "
             f"{s['threads']} threads, one image per run, each in its own process.", "",
             "| run | computes in | s / image | text encoder | UNet loop | VAE decode | peak RSS (GB) | PSNR vs our fp32 (dB) |",
             "|---|---|---|---|---|---|---|---|"]
    for label, (config, _) in OURS.items():
        m = perf.get(f"ours_{label}", {})
        parts = m.get("seconds", {})
        psnr = "reference" if label == "fp32" else _fmt(compare.get(f"psnr_ours_{label}_vs_ours_fp32_db"), ".1f")
        lines.append(f"| ours `{config}` | {m.get('compute_dtype', '—')} | {_fmt(m.get('generate_seconds'), '.1f')} | "
                     f"{_fmt(parts.get('text_encoder'), '.1f')} | {_fmt(parts.get('sampling'), '.1f')} | "
                     f"{_fmt(parts.get('vae_decode'), '.1f')} | {_fmt((m.get('peak_rss') or 0) / 1e9 or None, '.2f')} | {psnr} |")
    m = perf.get("sdcpp", {})
    if not result["sdcpp"].get("loaded"):
        lines.append(f"| stable-diffusion.cpp on our export | did not run: {result['sdcpp'].get('error', '?')} | — | — | — | — | — | — |")
    else:
        lines.append(f"| stable-diffusion.cpp on our export | its own (Q4_K / F16 / Q8_0) | {_fmt(m.get('generate_seconds'), '.1f')} "
                     f"| — | — | — | {_fmt((m.get('peak_rss') or 0) / 1e9 or None, '.2f')} | "
                     f"{_fmt(compare.get('psnr_sdcpp_vs_ours_fp32_db'), '.1f')} |")
    lines += ["", "| target | value | met |", "|---|---|---|"]
    for name, t in result.get("targets", {}).items():
        lines.append(f"| {name} | {_fmt(t['value'], '.2f')} | {t['met']} |")
    return "\n".join(lines) + "\n"


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / max(float(np.mean((a - b) ** 2)), 1e-12)))


def _picture(images: dict[str, np.ndarray], out: Path) -> None:
    """sd.cpp | ours fp32 | ours compressed | |sd.cpp − ours fp32| × 4 | sd.cpp with the next seed, labelled."""
    from PIL import Image, ImageDraw

    diff = np.clip(np.abs(images["sdcpp"] - images["fp32"]) * 4, 0, 255)
    panels = [("stable-diffusion.cpp", images["sdcpp"]), ("squeezegen fp32", images["fp32"]),
              ("squeezegen Q4_K+int8 bf16", images["compressed"]), ("|sd.cpp - fp32| x4", diff),
              ("sd.cpp, next seed", images["sdcpp_next_seed"])]  # fmt: skip
    h, w = images["sdcpp"].shape[:2]
    canvas = Image.new("RGB", (w * len(panels), h + 16), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, pixels) in enumerate(panels):
        canvas.paste(Image.fromarray(pixels.astype(np.uint8)), (i * w, 16))
        draw.text((i * w + 2, 2), label, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image side in px (SD 1.5 run)")
    parser.add_argument("--steps", type=int, default=4, help="Euler steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for sd.cpp and torch")
    parser.add_argument("--skip-sd15", action="store_true", help="only the toy")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sdcpp_export_") as tmp:
        work = Path(tmp)
        results = {"toy": run_toy(work, threads=args.threads)}
        if not args.skip_sd15:
            results["sd15"] = run_sd15(work, size=args.size, steps=args.steps, seed=args.seed, threads=args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sdcpp_export.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    if "sd15" in results:
        table = markdown(results["sd15"])
        (RESULTS / "sdcpp_export.md").write_text(table)
        print(table)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        run = {"sdcpp": _child_sdcpp, "ours": _child_ours}[sys.argv[2]]
        print("RESULT " + json.dumps(run(json.loads(sys.argv[3]))), flush=True)
    else:
        main()
