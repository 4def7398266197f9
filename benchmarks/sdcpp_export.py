"""stable-diffusion.cpp runs `squeezegen export --format sdcpp`: the toy's export and the SD 1.5 architecture's.

Needs stable-diffusion-cpp-python, which builds sd.cpp from source (~8 min on 2 cores) and so is
not in requirements.lock; install it next to the project's environment, e.g.

    pip install --no-deps --target /opt/sdcpp stable-diffusion-cpp-python
    PYTHONPATH=/opt/sdcpp python benchmarks/sdcpp_export.py [--size 256 --steps 4]

1. toy: the toy pipeline is exported and handed to sd.cpp; its answer is recorded (it refuses:
   sd.cpp builds SD 1.x from fixed hyper-parameters and detects the version by a 768-wide CLIP).
2. sd15: the SD 1.5-architecture pipeline (random weights, built from configs) is exported and
   sd.cpp draws one image in a child process (load and sampling seconds, peak RSS = VmHWM).
   Our pipeline draws the same picture twice, each in a child process of its own: fp32 (the
   weights unquantized; the `fp16` configuration, fp32 on a CPU) and compressed
   (`q4k_unet_int8_clip_cpu_vae`, from the quantize stage's files made here). All start from
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


def _child_sdcpp(job: dict) -> dict:
    from stable_diffusion_cpp import StableDiffusion

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
    """Our pipeline in configuration job["config"] (fp16 = fp32 on a CPU; or a compressed one) on the CPU."""
    import torch

    from squeezegen.sd.configurations import build_pipeline

    torch.set_num_threads(job["threads"])
    start = time.perf_counter()
    pipe = build_pipeline(job["config"], base_dir=job["base"], quant_dir=job.get("quant"), device="cpu").pipe
    pipe.scheduler = _euler(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load_seconds = time.perf_counter() - start
    start = time.perf_counter()
    h = job["size"] // 8
    with torch.inference_mode():
        embeds = pipe.text_encoder(torch.tensor([EMPTY_PROMPT_IDS]))[0].float()  # (1, 77, 768)
        noise = torch.from_numpy(philox_randn(job["seed"], 4 * h * h)).reshape(1, 4, h, h)  # ggml's order = torch's
        image = pipe(prompt_embeds=embeds, guidance_scale=1.0, num_inference_steps=job["steps"], latents=noise,
                     height=job["size"], width=job["size"]).images[0]  # fmt: skip
    image.save(job["png"])
    return {"load_seconds": load_seconds, "generate_seconds": time.perf_counter() - start, "peak_rss": _vm_hwm()}


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


def _log_lines(log: str, words: tuple[str, ...], work: Path) -> list[str]:
    lines = [line.strip()[:300] for line in log.splitlines() if any(w in line for w in words)][:12]
    return [line.replace(str(work), "<work>") for line in lines]  # no machine paths in results


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


OURS = {"fp32": "fp16", "compressed": "q4k_unet_int8_clip_cpu_vae"}  # label → our configuration (fp16 runs fp32 on a CPU)


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
    sdcpp, sdcpp_log, wall = run_child("sdcpp", {**common, "model": model, "png": str(work / "sdcpp.png")})
    perf["sdcpp"] = {k: v for k, v in sdcpp.items() if k not in ("loaded", "error")} | {"wall_seconds": wall}
    for label, config in OURS.items():
        job = {**common, "config": config, "base": str(base), "quant": str(work / "quantized"), "png": str(work / f"{label}.png")}
        ours, ours_log, wall = run_child("ours", job)
        perf[f"ours_{label}"] = ours | {"wall_seconds": wall}
        if "error" in ours:
            perf[f"ours_{label}"]["log_tail"] = ours_log[-1500:].replace(str(work), "<work>")
    run_child("sdcpp", {**common, "model": model, "seed": seed + 1, "png": str(work / "sdcpp_next_seed.png")})
    result = {
        "settings": {"size": size, "steps": steps, "seed": seed, "sampler": "euler", "sigmas": sigmas,
                     "prompt": "", "cfg_scale": 1.0, "threads": threads, "ours": OURS,
                     "weights": "random (sd15.build_sd15_pipeline, seed 0)"},
        "export": summary | {"path": "sd15.gguf"},
        "sdcpp": {"loaded": sdcpp.get("loaded", False), **({"error": sdcpp["error"]} if "error" in sdcpp else {})},
        "sdcpp_log": _log_lines(sdcpp_log, ("ERROR", "WARN", "get_sd_version", "Version", "total params memory"), work),
        "perf": perf,
    }  # fmt: skip
    names = ("sdcpp", "sdcpp_next_seed", *OURS)
    if all((work / f"{name}.png").is_file() for name in names):
        images = {name: np.asarray(Image.open(work / f"{name}.png").convert("RGB"), dtype=np.float64) for name in names}
        result["compare"] = {
            **{f"psnr_sdcpp_vs_ours_{label}_db": _psnr(images["sdcpp"], images[label]) for label in OURS},
            "psnr_sdcpp_next_seed_vs_ours_fp32_db": _psnr(images["sdcpp_next_seed"], images["fp32"]),
            "psnr_ours_compressed_vs_ours_fp32_db": _psnr(images["compressed"], images["fp32"]),
            "mean_abs_diff_sdcpp_vs_ours_fp32_0_255": float(np.abs(images["sdcpp"] - images["fp32"]).mean()),
        }
        if keep_files:
            _picture(images, RESULTS / "sdcpp_export.png")
    return result


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / max(float(np.mean((a - b) ** 2)), 1e-12)))


def _picture(images: dict[str, np.ndarray], out: Path) -> None:
    """sd.cpp | ours fp32 | ours compressed | |sd.cpp − ours fp32| × 4 | sd.cpp with the next seed, labelled."""
    from PIL import Image, ImageDraw

    diff = np.clip(np.abs(images["sdcpp"] - images["fp32"]) * 4, 0, 255)
    panels = [("stable-diffusion.cpp", images["sdcpp"]), ("squeezegen fp32", images["fp32"]),
              ("squeezegen Q4_K+int8", images["compressed"]), ("|sd.cpp - fp32| x4", diff),
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


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        run = {"sdcpp": _child_sdcpp, "ours": _child_ours}[sys.argv[2]]
        print("RESULT " + json.dumps(run(json.loads(sys.argv[3]))), flush=True)
    else:
        main()
