"""The full profile's code path at real scale, offline, on any machine: one command, one table.

    python benchmarks/full_profile_smoke.py [--images 16] [--size 256] [--steps 4] [--keep]

Clones the repository's HEAD into a temporary folder, writes an SD 1.5-architecture pipeline with
random weights (fp16, built from SD 1.5's configs by `squeezegen.sd.sd15`: nothing downloaded)
next to it, and points the clone's `full` profile at it with the scale knobs cut down: synthetic
LAPIS-shaped images instead of the gated archive, `--size` px for both branches, a few steps per
training, small batches. Then it runs every stage of `dvc.yaml` in DAG order (`dvc repro -s`),
one after the other, and writes a table per stage (ok, seconds, peak RSS of the stage's largest
process, key figures) to `benchmarks/results/full_profile_smoke.{json,md}`. A stage that fails
is recorded with its last error line; the stages after it are still tried.

The AlexNet weights of pretrained LPIPS are used where `$TORCH_HOME` has them; offline without
them the smoke run uses the random backbone (`lpips_pretrained: false`) and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# Nothing here imports torch or builds a model in this process: a child's peak RSS as the kernel
# reports it (wait4) starts from the parent's own peak at fork time (Linux carries it over exec).
from squeezegen.files import atomic_write_json, atomic_write_text  # noqa: E402
from squeezegen.metrics_files import merge_perf  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MIN_FREE_GIB = 10  # what the cut-down knobs below need at most (the benchmark's uncompressed row)
ALEXNET = "hub/checkpoints/alexnet-owt-7be5be79.pth"

# metrics file → (label, key path) shown in the table's "key figures" column
KEY_FIGURES = {  # paths after `merge_perf` (speed/load figures back in place)
    "data": [("train", "n_train"), ("val", "n_val")],
    "lora": [("trainable", "trainable_params"), ("of", "total_params"), ("loss", "final_loss"),
             ("stage peak", "peak_mem_bytes"), ("train peak", "peak_mem_bytes_train"),
             ("grid peak", "peak_mem_bytes_samples")],
    "quantize": [("UNet GGUF", "unet_bytes_gguf"), ("bits/weight", "unet_bpw"), ("Q4_K share", "q4k_fraction")],
    "benchmark": [("fp16 peak", "fp16.peak_bytes"), ("compressed peak", "q4k_unet_int8_clip_cpu_vae.peak_bytes")],
    "rqvae": [("PSNR", "psnr"), ("params", "params"), ("stage peak", "peak_mem_bytes"), ("train peak", "peak_mem_bytes_train")],
    "refiner": [("PSNR before", "psnr_before"), ("after", "psnr_after"), ("params", "params"),
                ("stage peak", "peak_mem_bytes"), ("train peak", "peak_mem_bytes_train")],
    "evaluate": [("SD peak ratio", "sd.peak_mem_ratio"), ("SD drift PSNR", "sd.drift_psnr")],
}


def smoke_params(params: dict, *, base: Path, images: int, size: int, steps: int, lpips_pretrained: bool) -> dict:
    """The clone's params.yaml: profile full, its scale knobs cut down (method knobs untouched,
    except the number of sample prompts, which only sets how many pictures are drawn)."""
    params["profile"] = "full"
    full = params["profiles"]["full"]
    full["data"].update(source="synthetic", num_images=images, max_images=None, sd_size=size, rq_size=size)
    full["sd"].update(base=str(base), infer_steps=2)
    full["lora"].update(max_steps=steps, batch_size=1, num_workers=0)
    full["benchmark"].update(size=size)
    full["rqvae"].update(max_steps=steps * 3, batch_size=4)
    full["refiner"].update(max_steps=steps, batch_size=2, lpips_pretrained=lpips_pretrained)
    for section in ("judge", "prior"):  # stages other issues may have added: few steps, small batches
        if isinstance(full.get(section), dict):
            for key in ("max_steps", "batch_size"):
                if key in full[section]:
                    full[section][key] = min(full[section][key], steps * 3 if key == "max_steps" else 4)
    params["lora"]["sample_prompts"] = 2
    params["evaluate"]["num_prompts"] = 2
    return params


def stage_order(repo: Path) -> list[str]:
    """The stages of dvc.yaml in an order where every stage comes after those whose outs it reads."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]

    def paths(entry: dict, kind: str) -> list[str]:
        return [p if isinstance(p, str) else next(iter(p)) for p in entry.get(kind, [])]

    producer = {out: name for name, entry in stages.items() for out in paths(entry, "outs")}
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for dep in paths(stages[name], "deps"):
            for out, upstream in producer.items():
                if upstream != name and (dep == out or dep.startswith(out + "/")):
                    visit(upstream)
        order.append(name)

    for name in stages:
        visit(name)
    return order


def mem_available() -> int | None:
    match = re.search(r"^MemAvailable:\s+(\d+)\s+kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def reset_own_peak() -> None:
    """VmHWM back to the current RSS, so what a child inherits at fork is this small process's RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def unet_dtype(base: Path) -> str:
    """The dtype of most tensors in the UNet's safetensors file, from its JSON header."""
    weights = next((base / "unet").glob("*.safetensors"))
    with open(weights, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    kinds = [v["dtype"] for k, v in header.items() if k != "__metadata__"]
    return max(set(kinds), key=kinds.count)


def run_stage(repo: Path, stage: str, env: dict, log: Path) -> dict:
    """`dvc repro -s <stage>`: ok, seconds and the peak RSS of the stage's largest process (wait4)."""
    reset_own_peak()
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "repro", "-s", stage],
                                cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    errors = [line.strip() for line in text.splitlines() if re.match(r"\s*(error|ERROR|\w*Error)\b", line.strip())]
    return {
        "stage": stage,
        "ok": proc.returncode == 0,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux: KiB, max over the process and its waited-for children
        "error": None if proc.returncode == 0 else (errors[-1] if errors else text.strip().splitlines()[-1])[:400],
        "log_tail": None if proc.returncode == 0 else text.strip().splitlines()[-30:],
    }


def key_figures(repo: Path) -> dict[str, dict]:
    figures = {}
    for name, keys in KEY_FIGURES.items():
        path = repo / "metrics" / f"{name}.json"
        if not path.is_file():
            continue
        data, found = merge_perf(json.loads(path.read_text())), {}
        for label, dotted in keys:
            node = data
            for part in dotted.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                found[label] = node
        figures[name] = found
    return figures


def benchmark_children_peak(repo: Path) -> int:
    """The benchmark runs each configuration in a process of multiprocessing's forkserver, which
    wait4 does not see (the server is not reaped by the stage): take their peaks from its metrics."""
    path = repo / "metrics" / "benchmark.json"
    if not path.is_file():
        return 0
    data = merge_perf(json.loads(path.read_text()))
    return max([int(v[key]) for v in data.values() if isinstance(v, dict)
                for key in ("peak_bytes", "load_peak_bytes") if key in v] or [0])


def disk_use(repo: Path) -> dict:
    """Bytes of models/base, of the DVC cache, and of both together with hard links counted once."""
    def files(folder: Path):
        return [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()] if folder.is_dir() else []

    seen, together = set(), 0
    for p in files(repo):
        st = p.stat()
        if (st.st_dev, st.st_ino) not in seen and (".dvc/cache" in str(p) or "/models/" in str(p) or "/data/" in str(p)):
            seen.add((st.st_dev, st.st_ino))
            together += st.st_size
    base = repo / "models" / "base"
    return {
        "models_base_bytes": sum(p.stat().st_size for p in base.rglob("*") if p.is_file()),
        "dvc_cache_bytes": sum(p.stat().st_size for p in files(repo / ".dvc" / "cache")),
        "outs_plus_cache_bytes_on_disk": together,
        "cache_type": subprocess.run([str(Path(sys.executable).parent / "dvc"), "config", "cache.type"], cwd=repo,
                                     capture_output=True, text=True).stdout.strip(),
    }


def fmt(value, key: str = "") -> str:
    if ("peak" in key or "bytes" in key or "GGUF" in key) and "ratio" not in key:
        return f"{value / 2**30:.2f} GiB"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(result: dict) -> str:
    rows = ["| stage | ok | seconds | peak RSS | key figures |", "|---|---|---|---|---|"]
    for r in result["stages"]:
        figures = "; ".join(f"{k} {fmt(v, k)}" for k, v in r.get("figures", {}).items())
        if r["error"]:
            figures = f"**{r['error']}** {figures}"
        rows.append(f"| {r['stage']} | {'yes' if r['ok'] else 'NO'} | {r['seconds']:.0f} | "
                    f"{r['peak_rss_bytes'] / 2**30:.2f} GiB | {figures} |")
    s, d = result["settings"], result["disk"]
    return (
        f"Full profile smoke run (`python benchmarks/full_profile_smoke.py`), {result['machine']}, "
        f"git {result['git_commit'][:10]}: SD 1.5 architecture with random fp16 weights as `sd.base`, "
        f"{s['images']} synthetic images at {s['size']} px, {s['steps']} LoRA / refiner steps, "
        f"LPIPS {'pretrained' if s['lpips_pretrained'] else 'random backbone (no AlexNet weights offline)'}; "
        f"total {result['seconds']:.0f} s.\n\n" + "\n".join(rows) + "\n\n"
        f"Disk: `models/base` {fmt(d['models_base_bytes'], 'bytes')}, DVC cache {fmt(d['dvc_cache_bytes'], 'bytes')}, "
        f"outputs + cache on disk {fmt(d['outs_plus_cache_bytes_on_disk'], 'bytes')} (cache.type `{d['cache_type']}`).\n"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS / "full_profile_smoke")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone (printed)")
    args = parser.parse_args(argv)
    free = mem_available()
    if free is not None and free < MIN_FREE_GIB * 2**30:
        raise SystemExit(f"needs ~{MIN_FREE_GIB} GiB of free RAM, {free / 2**30:.1f} GiB is free; lower --size")
    scratch = Path(tempfile.mkdtemp(prefix="squeezegen-full-smoke-"))
    repo, base = scratch / "repo", scratch / "sd15_base"
    started = time.perf_counter()
    try:
        subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(repo)], check=True)
        print(f"[smoke] building the SD 1.5-architecture pipeline (random fp16 weights) in {base} …", flush=True)
        build = f"from squeezegen.sd.sd15 import save_sd15_pipeline; save_sd15_pipeline({str(base)!r}, seed=0)"
        subprocess.run([sys.executable, "-c", build], check=True, env=dict(os.environ, PYTHONPATH=str(repo / "src")))
        torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
        lpips_pretrained = (torch_home / ALEXNET).is_file()
        params = yaml.safe_load((repo / "params.yaml").read_text())
        smoke = smoke_params(params, base=base, images=args.images, size=args.size, steps=args.steps,
                             lpips_pretrained=lpips_pretrained)
        (repo / "params.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DVC_NO_ANALYTICS="1",
                   TQDM_MININTERVAL="30", PYTHONPATH=str(repo / "src"))
        env.pop("MLFLOW_TRACKING_URI", None)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        rows, failed = [], set()
        for stage in stage_order(repo):
            print(f"[smoke] {stage} …", flush=True)
            row = run_stage(repo, stage, env, scratch / f"{stage}.log")
            rows.append(row)
            print(f"[smoke] {stage}: {'ok' if row['ok'] else 'FAILED'} in {row['seconds']:.0f} s, "
                  f"peak RSS {row['peak_rss_bytes'] / 2**30:.2f} GiB{'' if row['ok'] else ': ' + str(row['error'])}",
                  flush=True)
            if not row["ok"]:
                failed.add(stage)
        figures = key_figures(repo)
        metric_of = {"preprocess": "data", "finetune_lora": "lora", "quantize": "quantize", "benchmark": "benchmark",
                     "train_rqvae": "rqvae", "train_refiner": "refiner", "evaluate": "evaluate"}
        for row in rows:
            row["figures"] = figures.get(metric_of.get(row["stage"], ""), {}) if row["ok"] else {}
            if row["stage"] == "benchmark":
                row["peak_rss_bytes"] = max(row["peak_rss_bytes"], benchmark_children_peak(repo))
        if (repo / "models" / "base" / "unet").is_dir():
            next(r for r in rows if r["stage"] == "fetch_base")["figures"] = {"UNet dtype": unet_dtype(repo / "models" / "base")}
        result = {
            "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only",
            "settings": {"images": args.images, "size": args.size, "steps": args.steps, "lpips_pretrained": lpips_pretrained},
            "stages": rows,
            "failed": sorted(failed),
            "disk": disk_use(repo),
            "seconds": round(time.perf_counter() - started, 1),
        }
    finally:
        if args.keep:
            print(f"[smoke] kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
