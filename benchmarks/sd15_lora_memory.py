"""Peak memory and speed of LoRA training on the SD 1.5 architecture (random weights, no download).

    python benchmarks/sd15_lora_memory.py                          # GPU: 512 px, batch 4, fp16, 10 steps
    python benchmarks/sd15_lora_memory.py --resolution 64 --batch-size 1 --steps 2 --variants plain   # CPU check

Writes the SD 1.5-architecture pipeline (squeezegen.sd.sd15) and a small dataset of random
images with LAPIS-style captions, then runs the finetune_lora training code
(`squeezegen.sd.lora.train_lora`, params.yaml's `lora:` rank/alpha/targets/lr) once per
variant, each in a fresh child process:
  plain     — fp16 mixed precision (fp32 on a CPU), AdamW;
  ckpt      — plus gradient checkpointing;
  ckpt_8bit — plus bitsandbytes' 8-bit AdamW.
It reports per variant the peak memory of the training loop (CUDA: max_memory_allocated after a
reset once the models are loaded, so frozen weights count; CPU: peak RSS) and optimizer steps per
second over the steps after the first (compilation and allocator warm-up excluded), as JSON and
a table. Memory does not depend on the weights' values, so random weights give real-scale
figures; the loss values mean nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src" / "squeezegen").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

VARIANTS = {
    "plain": {"gradient_checkpointing": False, "use_8bit_adam": False},
    "ckpt": {"gradient_checkpointing": True, "use_8bit_adam": False},
    "ckpt_8bit": {"gradient_checkpointing": True, "use_8bit_adam": True},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=512, help="training image side (px)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per variant")
    p.add_argument("--mixed-precision", default="fp16", choices=["fp16", "bf16", "no"], help="GPU only; a CPU runs fp32")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--params", default=str(ROOT / "params.yaml"), help="params.yaml whose `lora:` section to use")
    p.add_argument("--files", default=None, help="keep (and reuse) the SD 1.5 pipeline in this folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON to write (default: benchmarks/results/sd15_lora_memory_<device>_<px>px.json)")
    return p.parse_args(argv)


class RandomCaptionedImages:
    """`n` random RGB images with LAPIS-style captions, read the way `CaptionedImages` reads the
    processed `datasets` table (`rows["caption"]`, `rows[i]["image_sd"]`); plain Python so the
    benchmark runs where `datasets` is not installed."""

    def __init__(self, n: int, resolution: int, seed: int) -> None:
        import numpy as np

        from squeezegen.sd.benchmark import benchmark_prompts

        self.rng = np.random.default_rng(seed)
        self.resolution, self.captions = resolution, benchmark_prompts(n)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, key):
        import numpy as np
        from PIL import Image

        if key == "caption":
            return self.captions
        pixels = self.rng.integers(0, 256, (self.resolution, self.resolution, 3), dtype=np.uint8)
        return {"image_sd": Image.fromarray(pixels), "caption": self.captions[key]}


def run_variant(name: str, base_dir: str, args: argparse.Namespace) -> dict:
    """Train `args.steps` steps of variant `name` in this process; numbers only (picklable)."""
    import torch

    from squeezegen.config import load_config
    from squeezegen.memory.probes import device_name
    from squeezegen.sd.lora import LoraSettings, train_lora
    from squeezegen.training import make_accelerator

    lora = load_config(args.params).lora
    settings = LoraSettings(
        rank=lora.rank, alpha=lora.alpha, target_modules=lora.target_modules, lr=lora.lr, max_steps=args.steps,
        batch_size=args.batch_size, checkpoint_every=args.steps + 1, seed=args.seed, resolution=args.resolution,
        weight_decay=lora.weight_decay, max_grad_norm=lora.max_grad_norm, min_snr_gamma=lora.min_snr_gamma,
        mixed_precision=args.mixed_precision, **VARIANTS[name],
    )
    accelerator = make_accelerator(settings.loop_settings())
    step_times: list[float] = []
    last = [time.perf_counter()]

    def on_log(step: int, logs: dict) -> None:  # called once per optimizer step
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now

    with tempfile.TemporaryDirectory(prefix="lora_bench_") as tmp:
        result = train_lora(
            base_dir=base_dir, dataset=RandomCaptionedImages(max(8, 2 * args.batch_size), args.resolution, args.seed),
            settings=settings, out_dir=Path(tmp) / "lora", checkpoint_dir=Path(tmp) / "ckpt",
            fingerprint=f"sd15_lora_memory:{name}", accelerator=accelerator, on_log=on_log,
        )
    steady = step_times[1:] or step_times
    return {
        "device": str(accelerator.device),
        "device_name": device_name(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        **VARIANTS[name],
        "peak_mem_bytes": result.train.peak_mem_bytes,
        "steps_per_s": len(steady) / sum(steady) if steady else 0.0,
        "trainable_params": result.trainable_params,
        "unet_params": result.total_params - result.trainable_params,
        "final_loss": result.train.history[-1]["loss"] if result.train.history else None,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    from squeezegen.files import atomic_write_json
    from squeezegen.sd.sd15 import save_sd15_pipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sd15_lora_") as scratch:
        base_dir = Path(args.files or scratch) / "base"
        if (base_dir / "model_index.json").is_file():
            print(f"[sd15_lora_memory] reusing {base_dir}", flush=True)
        else:
            print(f"[sd15_lora_memory] writing the SD 1.5-architecture pipeline to {base_dir} ...", flush=True)
            save_sd15_pipeline(base_dir, seed=args.seed, build_device=device)
        results = {}
        ctx = multiprocessing.get_context("spawn")  # a fresh CUDA context and accelerate state per variant
        for name in args.variants:
            with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                results[name] = pool.submit(run_variant, name, str(base_dir), args).result()
            r = results[name]
            print(f"[sd15_lora_memory] {name}: peak {r['peak_mem_bytes'] / 2**30:.2f} GiB, "
                  f"{r['steps_per_s']:.2f} steps/s", flush=True)

    first = results[args.variants[0]]
    summary = {
        "device": first["device_name"], "arch": "sd15", "resolution": args.resolution, "batch_size": args.batch_size,
        "steps": args.steps, "mixed_precision": first["mixed_precision"], "torch": torch.__version__,
        "trainable_params": first["trainable_params"], "variants": results, "seconds": time.perf_counter() - start,
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"sd15_lora_memory_{device}_{args.resolution}px.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, summary)

    peak_label = "peak allocated" if device == "cuda" else "peak RSS"
    print(f"\nLoRA training, SD 1.5 architecture on {summary['device']}: {args.resolution} px, batch "
          f"{args.batch_size}, mixed precision {summary['mixed_precision']}, {summary['trainable_params']:,} LoRA params")
    print(f"| variant | {peak_label} (GB) | vs plain | steps/s |\n|---|---|---|---|")
    base_peak = first["peak_mem_bytes"]
    for name, r in results.items():
        print(f"| `{name}` | {r['peak_mem_bytes'] / 1e9:.2f} | {r['peak_mem_bytes'] / base_peak:.2f} | {r['steps_per_s']:.2f} |")
    print(f"wrote {out} ({summary['seconds']:.0f} s in all)")
    return summary


if __name__ == "__main__":
    main()
