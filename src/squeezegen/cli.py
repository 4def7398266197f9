"""The `squeezegen` command line: one command per pipeline stage, plus tools.

Each stage command calls the same `main` that the DVC stage script `stages/<stage>.py` calls.
Mistakes a user can fix (bad params, missing files, bad arguments) print one clear message and
exit with code 2, without a traceback.
"""

from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from squeezegen.errors import UserError
from squeezegen.files import check_output_path
from squeezegen.formatting import fmt_bytes

app = typer.Typer(
    name="squeezegen",
    help="Make image generation fit in very little memory, reproducibly (run from the project root).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOpt = typer.Option("params.yaml", "--params", help="params file to read")
ProfileOpt = typer.Option(None, "--profile", help="override `profile:` (toy | full)")


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a UserError into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None

    return wrapper


def _run_stage(stage: str, params: str, profile: Optional[str]) -> None:
    from squeezegen import strict

    strict.apply(params, profile)  # before the stage module imports numpy or torch
    module = importlib.import_module(f"squeezegen.stages.{stage}")
    metrics = module.main(params=params, profile=profile)
    if metrics:
        typer.echo(json.dumps(metrics, indent=2, sort_keys=True, default=str))


def _stage_command(stage: str, summary: str) -> None:
    def command(params: str = ParamsOpt, profile: Optional[str] = ProfileOpt) -> None:
        _run_stage(stage, params, profile)

    command.__doc__ = summary
    app.command(name=stage.replace("_", "-"), help=summary)(_friendly(command))


for _stage, _summary in [
    ("check_params", "Stage check_params: validate all of params.yaml (every profile) → data/params_checked.json."),
    ("fetch_data", "Stage fetch_data: synthetic art, LAPIS or a folder → data/raw/."),
    ("preprocess", "Stage preprocess: validate, caption, resize, split → data/processed/."),
    ("fetch_base", "Stage fetch_base: SD 1.5 from the hub (or a tiny SD built locally) → models/base/."),
    ("finetune_lora", "Stage finetune_lora: LoRA on the UNet attention → models/lora/."),
    ("quantize", "Stage quantize: fuse LoRA, UNet → GGUF Q4_K, CLIP → int8 → models/quantized/."),
    ("benchmark", "Stage benchmark: peak memory, speed and drift per configuration → reports/benchmark/."),
    ("train_rqvae", "Stage train_rqvae: residual-quantized VAE → models/rqvae/."),
    ("train_refiner", "Stage train_refiner: detail-restoring UNet (L1 + LPIPS) → models/refiner/."),
    ("train_prior", "Stage train_prior: conditional RQ-Transformer over the RQ-VAE's codes → models/prior/."),
    ("train_judge", "Stage train_judge: style / genre / score referee CNN, real images only → models/judge/."),
    ("evaluate", "Stage evaluate: compare both branches → reports/report.md, metrics/evaluate.json."),
]:
    _stage_command(_stage, _summary)


@app.command()
@_friendly
def config(params: str = ParamsOpt, profile: Optional[str] = ProfileOpt) -> None:
    """Print the resolved config (top-level method knobs + the profile's scale knobs)."""
    from squeezegen.config import dump_config, load_config

    typer.echo(dump_config(load_config(params, profile=profile)), nl=False)


@app.command()
@_friendly
def generate(
    prompt: str = typer.Argument(..., help="text prompt"),
    out: Path = typer.Option(Path("generated.png"), "--out", help="PNG file to write"),
    seed: int = typer.Option(0, "--seed", help="sampling seed"),
    score: Optional[float] = typer.Option(None, "--score", min=0, max=100,
                                          help='ask for this LAPIS score (0-100): appends ", rated <score/10> of 10"'),
    base: Path = typer.Option(Path("models/base"), "--base", help="diffusers pipeline folder"),
    lora: Optional[Path] = typer.Option(None, "--lora", help="LoRA folder (pytorch_lora_weights.safetensors)"),
    compressed: bool = typer.Option(False, "--compressed", help="GGUF Q4_K UNet + 8-bit CLIP + CPU VAE"),
    quantized: Path = typer.Option(Path("models/quantized"), "--quantized", help="folder from the quantize stage"),
    steps: Optional[int] = typer.Option(None, "--steps", help="sampling steps (default: sd.infer_steps)"),
    size: Optional[int] = typer.Option(None, "--size", help="image size in px (default: data.sd_size)"),
    params: str = ParamsOpt,
    profile: Optional[str] = ProfileOpt,
) -> None:
    """Generate an image with the base pipeline (+ LoRA), or the compressed one."""
    from squeezegen.config import load_config
    from squeezegen.data.captions import rated_caption

    check_output_path(out, label="--out")  # before the models load: a bad path must not cost the image
    cfg = load_config(params, profile=profile)
    steps = steps or cfg.sd.infer_steps
    size = size or cfg.data.sd_size
    prompt = rated_caption(prompt, score)
    for label, folder in [("--base", base), ("--lora", lora)] + ([("--quantized", quantized)] if compressed else []):
        if folder is not None and not folder.exists():
            raise UserError(f"{label} {folder}: not found; run `dvc repro` (or the matching stage) first")
    if compressed:
        from squeezegen.sd.configurations import generate_compressed

        image, peaks = generate_compressed(
            prompt, base_dir=base, quant_dir=quantized, seed=seed, steps=steps, size=size,
            guidance_scale=cfg.benchmark.guidance_scale, compute_dtype=cfg.benchmark.compute_dtype,
            cpu_dtype=cfg.benchmark.cpu_dtype,
        )
        typer.echo("peak memory: " + ", ".join(f"{k}={fmt_bytes(v)}" for k, v in peaks.items() if isinstance(v, (int, float))))
    else:
        from squeezegen.sd.generate import generate_image

        image = generate_image(base, prompt, lora_dir=lora, seed=seed, steps=steps, size=size)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    typer.echo(f"wrote {out}")


@app.command()
@_friendly
def reconstruct(
    image: Path = typer.Argument(..., exists=True, dir_okay=False, help="image to encode and decode"),
    levels: Optional[int] = typer.Option(None, "--levels", help="residual levels to decode with (default: all)"),
    out: Path = typer.Option(Path("reconstructed.png"), "--out", help="PNG file to write"),
    refine: bool = typer.Option(False, "--refine", help="add the refiner's detail"),
    rqvae: Path = typer.Option(Path("models/rqvae"), "--rqvae", help="RQ-VAE folder"),
    refiner: Path = typer.Option(Path("models/refiner"), "--refiner", help="refiner folder"),
) -> None:
    """Encode an image to RQ codes and decode it with the first k levels (+ refiner)."""
    from PIL import Image, UnidentifiedImageError

    from squeezegen.rq.evaluation import reconstruct_image

    check_output_path(out, label="--out")
    for label, folder in [("--rqvae", rqvae)] + ([("--refiner", refiner)] if refine else []):
        if not folder.exists():
            raise UserError(f"{label} {folder}: not found; run `dvc repro train_refiner` first")
    try:
        img = Image.open(image).convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{image}: not a readable image ({exc})") from None
    result = reconstruct_image(img, rqvae_dir=rqvae, levels=levels, refiner_dir=refiner if refine else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.save(out)
    typer.echo(f"wrote {out}")


@app.command()
@_friendly
def sample(
    style: str = typer.Option(..., "--style", help="WikiArt style: LAPIS spelling (Post_Impressionism) or words (post impressionism)"),
    genre: str = typer.Option(..., "--genre", help="LAPIS genre: portrait, landscape, still life, …"),
    score: float = typer.Option(70.0, "--score", help="aesthetic score to ask for, 0–100"),
    n: int = typer.Option(16, "-n", min=1, max=256, help="images to generate"),
    seed: int = typer.Option(0, "--seed", help="same seed, same images"),
    out: Path = typer.Option(Path("samples.png"), "--out", help="PNG grid to write"),
    guidance: Optional[float] = typer.Option(None, "--guidance", min=0.0, help="classifier-free guidance (default: prior.guidance_scale)"),
    score_guidance: Optional[float] = typer.Option(
        None, "--score-guidance", min=0.0, help="extra guidance toward --score, away from 100 − score (default: prior.score_guidance_scale)"),
    no_refine: bool = typer.Option(False, "--no-refine", help="skip the refiner (RQ-VAE decode only)"),
    prior: Path = typer.Option(Path("models/prior"), "--prior", help="prior folder"),
    rqvae: Path = typer.Option(Path("models/rqvae"), "--rqvae", help="RQ-VAE folder"),
    refiner: Path = typer.Option(Path("models/refiner"), "--refiner", help="refiner folder"),
    params: str = ParamsOpt,
) -> None:
    """Generate art with the RQ branch: prior → codes → RQ-VAE → refiner, as a PNG grid."""
    from squeezegen.config import load_config
    from squeezegen.rq.generate import RQGenerator
    from squeezegen.rq.pictures import save_grid

    check_output_path(out, label="--out")  # before sampling: the images would be lost
    prior_cfg = load_config(params).prior
    gen = RQGenerator.load(prior, rqvae, None if no_refine else refiner)
    images, seconds = gen.generate(
        styles=[style] * n, genres=[genre] * n, scores=[score] * n, seed=seed,
        guidance_scale=prior_cfg.guidance_scale if guidance is None else guidance,
        score_guidance_scale=prior_cfg.score_guidance_scale if score_guidance is None else score_guidance,
        temperature=prior_cfg.temperature, top_k=prior_cfg.top_k,
    )
    save_grid(out, images)
    typer.echo(f"wrote {out}: {n} images, {seconds:.3f} s per image ({1 / seconds:.1f} images/s)")


@app.command()
@_friendly
def inspect(
    path: Path = typer.Argument(..., help="a .gguf file"),  # checked by the reader: one-line errors
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Check a GGUF file as strictly as ggml does, then list its tensors: type, shape, bytes, bits per weight."""
    from squeezegen.quant.gguf.io import format_summary, summarize_gguf

    summary = summarize_gguf(path)
    typer.echo(json.dumps(summary, indent=2, default=str) if as_json else format_summary(summary))


@app.command()
@_friendly
def export(
    out: Path = typer.Argument(..., help="the .gguf file to write"),
    fmt: str = typer.Option("sdcpp", "--format", help="sdcpp (UNet + CLIP + VAE for stable-diffusion.cpp) | comfy (UNet for ComfyUI-GGUF)"),
    base: Path = typer.Option(Path("models/base"), "--base", help="diffusers pipeline folder (sdcpp)"),
    lora: Path = typer.Option(Path("models/lora"), "--lora", help="LoRA folder fused into the UNet (sdcpp)"),
    no_lora: bool = typer.Option(False, "--no-lora", help="export the base weights without the LoRA (sdcpp)"),
    quantized: Path = typer.Option(Path("models/quantized"), "--quantized", help="folder from the quantize stage (comfy)"),
) -> None:
    """Write one GGUF file that another tool loads: stable-diffusion.cpp (sdcpp) or ComfyUI-GGUF (comfy)."""
    from squeezegen.quant.gguf.export import FORMATS, export_comfy, export_sdcpp

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    check_output_path(out, label="OUT")
    if fmt == "sdcpp":
        summary = export_sdcpp(out, base_dir=base, lora_dir=None if no_lora else lora)
    else:
        summary = export_comfy(out, quant_dir=quantized)
    typer.echo(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app()
