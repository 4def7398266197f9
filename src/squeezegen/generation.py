"""Generation, measured: every generator on the same conditions, scored by the judge (evaluate's `gen.*`).

The conditions are the first n val images' (style, genre, score): the RQ prior is asked for
exactly those, SD for their captions ("a cubist portrait painting"). Each generator's samples go
through the judge, which was trained on real images only:
- style_acc / genre_acc: how often the judge reads the asked-for style / genre;
- score_mean: the judge's aesthetic score; for the RQ prior also the same conditions asked for a
  high vs a low score (score_control = judged high − judged low);
- fd_judge: the Fréchet distance between the samples and the val images in the judge's feature
  space (not FID: the judge is small and trained here);
and two baselines: real train images (the floor of fd_judge) and codes drawn independently per
position and level from their train frequencies, decoded the same way (what the prior must beat).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from squeezegen.data.captions import caption_for
from squeezegen.judge import frechet_distance, judge_images

SCORE_HIGH, SCORE_LOW = 80.0, 30.0  # the score-control pair
PICTURE_SCORES = (20.0, 50.0, 80.0)  # one picture row per score for the RQ prior
PICTURE_COLUMNS = 8  # conditions shown in the pictures


@dataclass(frozen=True)
class Conditions:
    styles: list[str]
    genres: list[str]
    scores: list[float]

    @property
    def captions(self) -> list[str]:
        return [caption_for(s, g) for s, g in zip(self.styles, self.genres)]

    def __len__(self) -> int:
        return len(self.styles)


@dataclass(frozen=True)
class SamplingSettings:
    seed: int
    guidance_scale: float
    score_guidance_scale: float
    temperature: float
    top_k: int | None


def load_split(processed_dir: str | Path, split: str) -> tuple[torch.Tensor, Conditions]:
    """uint8 images (M, 3, H, W) at the RQ resolution and their conditions, in dataset order."""
    from squeezegen.rq.prior_train import load_conditions
    from squeezegen.rq.train import load_image_tensors

    images = load_image_tensors(processed_dir, split)
    styles, genres, scores = load_conditions(processed_dir, split)
    return images, Conditions(styles, genres, [float(s) for s in scores])


def judged(judge, images: torch.Tensor, cond: Conditions, reference_features: np.ndarray) -> dict[str, Any]:
    """The judge's verdict on images asked for `cond`: style/genre accuracy, mean score, fd_judge."""
    styles = [s if s in judge.styles else None for s in cond.styles]
    known = [i for i, s in enumerate(styles) if s is not None]
    verdict = judge_images(judge, images)
    out = {"score_mean": verdict["score_mean"], "fd_judge": frechet_distance(verdict["features"], reference_features)}
    if known:  # a style the judge never saw cannot be judged
        out["style_acc"] = float(np.mean([verdict["style_pred"][i] == cond.styles[i] for i in known]))
    out["genre_acc"] = float(np.mean([p == g for p, g in zip(verdict["genre_pred"], cond.genres)]))
    return out


def judged_high_low(gen, judge, cond: Conditions, *, seed: int, desc: str | None = None, **sampling) -> tuple[float, float]:
    """Score control: the conditions asked for SCORE_HIGH and for SCORE_LOW in one batch → the mean
    judged score of each half. `sampling`: sample_codes' guidance, temperature and top_k."""
    from squeezegen.rq.sampling import sample_codes

    n = len(cond)
    asked = sample_codes(gen.prior, styles=cond.styles * 2, genres=cond.genres * 2, scores=[SCORE_HIGH] * n + [SCORE_LOW] * n,
                         seed=seed, desc=desc, **sampling)
    scores = judge_images(judge, gen.decode(asked))["scores"]  # (2n,)
    return float(scores[:n].mean()), float(scores[n:].mean())


def evaluate_rq(gen, train_codes: torch.Tensor, cond: Conditions, settings: SamplingSettings, judge, reference: np.ndarray):
    """(metrics of rq_prior, rq_prior_norefine, rq_marginal; their images; the score rows picture)."""
    from squeezegen.rq.sampling import sample_codes

    n = len(cond)
    kw = dict(guidance_scale=settings.guidance_scale, score_guidance_scale=settings.score_guidance_scale,
              temperature=settings.temperature, top_k=settings.top_k)
    started = time.perf_counter()
    codes = sample_codes(gen.prior, styles=cond.styles, genres=cond.genres, scores=cond.scores, seed=settings.seed,
                         desc="sample codes", **kw)
    sampled = time.perf_counter()
    raw = gen.decode(codes, refine=False)
    decoded = time.perf_counter()
    refined = gen.decode(codes, refine=True)
    done = time.perf_counter()
    images = {"rq_prior": refined, "rq_prior_norefine": raw}
    metrics = {
        "rq_prior": {**judged(judge, refined, cond, reference),
                     "seconds_per_image": (sampled - started + done - decoded) / n},
        "rq_prior_norefine": {**judged(judge, raw, cond, reference), "seconds_per_image": (decoded - started) / n},
    }
    metrics["rq_prior"]["images_per_s"] = 1.0 / metrics["rq_prior"]["seconds_per_image"]
    high, low = judged_high_low(gen, judge, cond, seed=settings.seed + 1, desc="sample at two scores", **kw)
    metrics["rq_prior"].update(score_high=high, score_low=low, score_control=high - low)
    marginal = gen.generate_marginal(train_codes, n=n, seed=settings.seed)
    images["rq_marginal"] = marginal
    metrics["rq_marginal"] = judged(judge, marginal, cond, reference)

    k = min(PICTURE_COLUMNS, n)
    asked = sample_codes(gen.prior, styles=cond.styles[:k] * len(PICTURE_SCORES), genres=cond.genres[:k] * len(PICTURE_SCORES),
                         scores=[s for s in PICTURE_SCORES for _ in range(k)], seed=settings.seed + 2, desc="sample score rows", **kw)
    by_score = gen.decode(asked)  # (len(PICTURE_SCORES)·k, 3, H, W)
    score_rows = [by_score[i * k : (i + 1) * k] for i in range(len(PICTURE_SCORES))]
    return metrics, images, score_rows


def evaluate_sd(
    config_name: str, cond: Conditions, *, base_dir, lora_dir, quant_dir, seed: int, steps: int, size: int,
    guidance: float, compute_dtype: str, judge, reference: np.ndarray,
) -> tuple[dict[str, Any], torch.Tensor]:
    """One SD configuration on the conditions' captions (seed + i for the i-th): its metrics and uint8 images."""
    from squeezegen.memory import free_memory
    from squeezegen.sd.compressed import build_pipeline, default_device, generate

    device = default_device()
    bundle = build_pipeline(config_name, base_dir=base_dir, lora_dir=lora_dir, quant_dir=quant_dir, device=device,
                            compute_dtype=compute_dtype)
    result = generate(bundle, cond.captions, [seed + i for i in range(len(cond))], steps=steps, size=size, guidance=guidance)
    images = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in result.images])).permute(0, 3, 1, 2)
    metrics = {**judged(judge, images, cond, reference), "seconds_per_image": float(np.mean(result.seconds))}
    del bundle, result
    free_memory(device)
    return metrics, images  # (n, 3, size, size) uint8


def sd_size_figures(base_dir: Path, lora_dir: Path, quant_dir: Path) -> dict[str, dict[str, int]]:
    """Parameters and bytes on disk of the uncompressed (base + LoRA) and compressed SD pipelines."""
    from safetensors import safe_open

    from squeezegen.rq.generate import folder_bytes

    params = 0
    for part in ("unet", "text_encoder", "vae"):
        for file in sorted((base_dir / part).glob("*.safetensors")):
            with safe_open(str(file), "pt") as f:
                params += sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    base_bytes = sum(folder_bytes(base_dir / p) for p in ("unet", "text_encoder", "vae"))
    return {
        "sd": {"params": params, "bytes": base_bytes + folder_bytes(lora_dir)},
        "sd_compressed": {"params": params, "bytes": folder_bytes(quant_dir) + folder_bytes(base_dir / "vae")},
    }


def _pil_row(images: torch.Tensor) -> list:
    from PIL import Image

    return [Image.fromarray(im.permute(1, 2, 0).cpu().numpy()) for im in images]


def run_generation(cfg, *, processed_dir: Path, judge_dir: Path, prior_dir: Path, rqvae_dir: Path, refiner_dir: Path,
                   base_dir: Path, lora_dir: Path, quant_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every generator on the same n val conditions → (`gen` metrics, {file name: PIL picture})."""
    from squeezegen.judge import load_judge
    from squeezegen.rq.generate import encode_codes, RQGenerator
    from squeezegen.sd.generate import labelled_grid

    judge = load_judge(judge_dir)
    val_images, val_cond = load_split(processed_dir, "val")
    train_images, train_cond = load_split(processed_dir, "train")
    n = min(cfg.evaluate.gen_samples, len(val_cond), len(train_cond))
    cond = Conditions(val_cond.styles[:n], val_cond.genres[:n], val_cond.scores[:n])
    reference = judge_images(judge, val_images)["features"]  # (M, D): every val image
    real_val = judged(judge, val_images, val_cond, reference)
    metrics: dict[str, Any] = {
        "n": n,
        "judge_on_val": {"style_acc": real_val.get("style_acc"), "genre_acc": real_val["genre_acc"], "score_mean": real_val["score_mean"]},
        "real_train": judged(judge, train_images[:n], Conditions(train_cond.styles[:n], train_cond.genres[:n], train_cond.scores[:n]), reference),
    }

    gen = RQGenerator.load(prior_dir, rqvae_dir, refiner_dir)
    train_codes = encode_codes(gen.rqvae, train_images)  # (M, N, L): the marginal baseline's frequencies
    pc = cfg.prior
    settings = SamplingSettings(seed=cfg.seed, guidance_scale=pc.guidance_scale, score_guidance_scale=pc.score_guidance_scale,
                                temperature=pc.temperature, top_k=pc.top_k)
    rq_metrics, images, score_rows = evaluate_rq(gen, train_codes, cond, settings, judge, reference)
    metrics.update(rq_metrics)
    metrics["rq_prior"]["sampling"] = {k: v for k, v in asdict(settings).items() if k != "seed"}
    sizes, disk = gen.params, gen.bytes_on_disk
    metrics["rq_prior"].update(params=sum(sizes.values()), bytes=sum(disk.values()), params_by_model=sizes)
    metrics["rq_prior_norefine"].update(params=sizes["prior"] + sizes["rqvae"], bytes=disk["prior"] + disk["rqvae"])
    metrics["rq_marginal"].update(params=sizes["rqvae"] + sizes["refiner"], bytes=disk["rqvae"] + disk["refiner"])

    for name, config_name in (("sd", "fp16"), ("sd_compressed", "q4k_unet_int8_clip_cpu_vae")):
        metrics[name], images[name] = evaluate_sd(
            config_name, cond, base_dir=base_dir, lora_dir=lora_dir, quant_dir=quant_dir, seed=cfg.seed,
            steps=cfg.sd.infer_steps, size=cfg.data.sd_size, guidance=cfg.benchmark.guidance_scale,
            compute_dtype=cfg.benchmark.compute_dtype, judge=judge, reference=reference,
        )
    for name, figures in sd_size_figures(base_dir, lora_dir, quant_dir).items():
        metrics[name].update(figures)

    # where the prior stands: its style accuracy against the judge's on real images, and its
    # fd_judge between the floor (real images, 0) and the independent-codes baseline (1)
    floor, baseline = metrics["real_train"]["fd_judge"], metrics["rq_marginal"]["fd_judge"]
    rq = metrics["rq_prior"]
    if real_val.get("style_acc") and "style_acc" in rq:
        rq["style_acc_vs_real"] = rq["style_acc"] / real_val["style_acc"]
    rq["fd_position"] = (rq["fd_judge"] - floor) / (baseline - floor) if baseline != floor else None

    shown = slice(0, PICTURE_COLUMNS)
    labels = [f"{c} ({s:.0f})" for c, s in zip(cond.captions[shown], cond.scores[shown])]
    rows = {"real (val)": val_images[shown], "RQ prior\n+ refiner": images["rq_prior"][shown],
            "RQ prior\nno refiner": images["rq_prior_norefine"][shown], "independent\ncodes + ref.": images["rq_marginal"][shown],
            "SD + LoRA": images["sd"][shown], "SD Q4_K\n+ int8 CLIP": images["sd_compressed"][shown]}
    pictures = {
        "generation.png": labelled_grid([_pil_row(r) for r in rows.values()], row_labels=list(rows), col_labels=labels),
        "rq_scores.png": labelled_grid([_pil_row(r) for r in score_rows], row_labels=[f"score {s:.0f}" for s in PICTURE_SCORES],
                                       col_labels=cond.captions[shown]),
    }
    return metrics, pictures


GENERATOR_ROWS = (  # (key, label) in table order
    ("real_train", "real images (train split): the floor"),
    ("rq_prior", "**RQ generator** (prior + RQ-VAE + refiner)"),
    ("rq_prior_norefine", "RQ generator without refiner"),
    ("rq_marginal", "independent codes + RQ-VAE + refiner: the baseline"),
    ("sd", "SD + LoRA, uncompressed"),
    ("sd_compressed", "SD + LoRA, Q4_K UNet + int8 CLIP + CPU VAE"),
)


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _mib(value: Any) -> str:
    return "—" if value is None else f"{value / 2**20:.2f} MiB"


def generation_markdown(gen: dict[str, Any], *, judge: dict[str, Any], profile: str) -> str:
    """The report's generation section from evaluate's `gen` metrics and metrics/judge.json."""
    rows = ["| generator | params | on disk | s / image | style acc | genre acc | judged score | fd_judge |",
            "|---|---|---|---|---|---|---|---|"]
    for key, label in GENERATOR_ROWS:
        m = gen.get(key, {})
        rows.append(f"| {label} | {_fmt(m.get('params'), ',')} | {_mib(m.get('bytes'))} | {_fmt(m.get('seconds_per_image'), '.3f')} "
                    f"| {_fmt(m.get('style_acc'), '.2f')} | {_fmt(m.get('genre_acc'), '.2f')} | {_fmt(m.get('score_mean'), '.1f')} "
                    f"| {_fmt(m.get('fd_judge'), '.2f')} |")
    rq, val = gen.get("rq_prior", {}), gen.get("judge_on_val", {})
    sampling = rq.get("sampling", {})
    toy = ("\n\nOn the toy profile the SD base is a tiny randomly initialised pipeline (60 LoRA steps), so its rows "
           "are near chance: they prove the code path, not SD's quality." if profile == "toy" else "")
    return "\n\n".join([
        "## C. Generation: the RQ generator next to Stable Diffusion",
        f"Every generator is asked for the same {gen.get('n', '?')} conditions: the first validation images' style, genre "
        f"and aesthetic score (SD gets their captions, e.g. \"a cubist portrait painting\"). A judge trained on real "
        f"images only (val style accuracy {_fmt(judge.get('style_acc'), '.2f')}, genre accuracy {_fmt(judge.get('genre_acc'), '.2f')}, "
        f"score R² {_fmt(judge.get('score_r2'), '.2f')}) reads every sample. `fd_judge` is the Fréchet distance to the "
        f"validation images in the judge's feature space — not FID; lower is closer to real. On real validation images "
        f"the judge reads the style {_fmt(val.get('style_acc'), '.2f')} and the genre {_fmt(val.get('genre_acc'), '.2f')} of the time.{toy}",
        "\n".join(rows),
        f"**Score control.** The RQ generator samples with classifier-free guidance {_fmt(sampling.get('guidance_scale'), 'g')} "
        f"and score guidance {_fmt(sampling.get('score_guidance_scale'), 'g')} (toward the asked score, away from 100 − score). "
        f"Asked for a score of {SCORE_HIGH:.0f}, its samples are judged "
        f"{_fmt(rq.get('score_high'), '.1f')}; asked for {SCORE_LOW:.0f}, {_fmt(rq.get('score_low'), '.1f')} "
        f"(difference {_fmt(rq.get('score_control'), '+.1f')} points). Its `fd_judge` sits at "
        f"{_fmt(rq.get('fd_position'), '.2f')} of the way from the real-image floor (0) to the independent-codes baseline (1).",
        "![one row per generator, same conditions](evaluate/generation.png)",
        "The RQ generator asked for the same styles and genres at three aesthetic scores:",
        "![RQ generator at scores 20, 50, 80](evaluate/rq_scores.png)",
    ])
