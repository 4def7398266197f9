"""Generation, measured: every generator on the same conditions and seeds, scored by the judge (evaluate's `gen.*`).

The conditions are the first n val images' (style, genre, score): the RQ prior is asked for
exactly those, SD for their captions ("a cubist portrait painting"), once per sampling seed
(`sampling_seeds`). Each generator's samples go through the judge, which was trained on real
images only:
- style_acc / genre_acc: how often the judge reads the asked-for style / genre;
- score_mean: the judge's aesthetic score; for the RQ prior also the same conditions asked for a
  high vs a low score (score_control = judged high − judged low);
- fd_judge: the Fréchet distance between the samples and the val images in the judge's feature
  space (not FID: the judge is small and trained here);
and two baselines: real train images (the floor of fd_judge) and codes drawn independently per
position and level from their train frequencies, decoded the same way (what the prior must beat).
Every quality figure carries a 95% bootstrap interval over conditions × seeds
(`generation_intervals`, stored as `gen.<row>.ci95.<figure>`).
"""

from __future__ import annotations

import textwrap
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from squeezegen.data.captions import caption_for, rated_caption
from squeezegen.judge import FrechetReference, judge_images
from squeezegen.pictures import labelled_grid
from squeezegen.stats import REPLICATES, bootstrap_intervals, take

SCORE_HIGH, SCORE_LOW = 80.0, 30.0  # the score-control pair


PICTURE_SCORES = (20.0, 50.0, 80.0)  # one picture row per score for the RQ prior
PICTURE_COLUMNS = 8  # conditions shown in the pictures


GRID_STYLES, GRID_GENRES = 6, 7  # the style × genre picture: the val split's most frequent styles (rows) × genres


GRID_SCORE = 80.0  # the score every cell of the style × genre picture asks for
SEED_STRIDE = 10_000  # sampling seed j = seed + SEED_STRIDE·j: SD's per-condition seeds (+ i) never collide for n < this
FRECHET_FIGURES = ("fd_judge", "fd_position")  # figures whose bootstrap replicates are biased upward (see generation_intervals)
# gen row → (SD configuration, with the LoRA?): the base alone, base + LoRA, and the compressed pipeline
# (whose Q4_K UNet has the LoRA fused in by the quantize stage)
SD_ROWS = {"sd_base": ("fp16", False), "sd": ("fp16", True), "sd_compressed": ("q4k_unet_int8_clip_cpu_vae", True)}
BASELINE_ROWS = ("real_train", "rq_marginal")  # the floor and the baseline: no score control, no standing


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

    def first(self, n: int) -> Conditions:
        return Conditions(self.styles[:n], self.genres[:n], self.scores[:n])


@dataclass(frozen=True)
class SamplingSettings:
    seed: int
    guidance_scale: float
    score_guidance_scale: float
    temperature: float
    top_k: int | None

    @property
    def sampling(self) -> dict[str, Any]:
        """The keyword arguments of `gen.sample` besides conditions and seed."""
        return {k: v for k, v in asdict(self).items() if k != "seed"}


@dataclass(frozen=True)
class Verdicts:
    """The judge's reading of one generator's samples, as (seeds k, conditions n) tables."""

    style_hit: np.ndarray  # (k, n) 1.0 where the asked style was read, NaN where the judge does not know it
    genre_hit: np.ndarray  # (k, n) 1.0 where the asked genre was read
    scores: np.ndarray  # (k, n) judged aesthetic score (points)
    features: np.ndarray  # (k, n, D) judge features

    @classmethod
    def stack(cls, per_seed: Sequence[Verdicts]) -> Verdicts:
        """One table from per-seed tables, in seed order."""
        return cls(*(np.concatenate([getattr(v, f.name) for v in per_seed]) for f in fields(cls)))


def sampling_seeds(seed: int, count: int) -> list[int]:
    """evaluate's sampling seeds: seed, seed + SEED_STRIDE, … (`count` of them; the first is the seed itself)."""
    return [seed + SEED_STRIDE * j for j in range(count)]


def load_split(processed_dir: str | Path, split: str) -> tuple[torch.Tensor, Conditions]:
    """uint8 images (M, 3, H, W) at the RQ resolution and their conditions, in dataset order."""
    from squeezegen.data.tensors import load_image_tensors
    from squeezegen.rq.prior_train import load_conditions

    images = load_image_tensors(processed_dir, split)
    styles, genres, scores = load_conditions(processed_dir, split)
    return images, Conditions(styles, genres, [float(s) for s in scores])


def read_samples(judge, images: torch.Tensor, cond: Conditions) -> Verdicts:
    """The judge's verdicts on images (n, 3, H, W) asked for `cond` with one seed: (1, n) tables."""
    verdict = judge_images(judge, images)
    style = [float(p == s) if s in judge.styles else np.nan for p, s in zip(verdict["style_pred"], cond.styles)]
    genre = [float(p == g) for p, g in zip(verdict["genre_pred"], cond.genres)]
    return Verdicts(np.array([style]), np.array([genre]), verdict["scores"][None].astype(np.float64), verdict["features"][None])


def judge_figures(v: Verdicts, reference: FrechetReference, conditions: np.ndarray | None = None,
                  seeds: np.ndarray | None = None) -> dict[str, float]:
    """score_mean, fd_judge (to the reference features), style_acc (if a judgeable style was asked) and
    genre_acc of the chosen (condition, seed) samples (`stats.take`; None: all)."""
    style = take(v.style_hit, conditions, seeds)
    known = style[np.isfinite(style)]  # a style the judge never saw cannot be judged
    out = {"score_mean": float(take(v.scores, conditions, seeds).mean()),
           "fd_judge": reference.distance(take(v.features, conditions, seeds))}
    if len(known):
        out["style_acc"] = float(known.mean())
    out["genre_acc"] = float(take(v.genre_hit, conditions, seeds).mean())
    return out


def judged(judge, images: torch.Tensor, cond: Conditions, reference_features: np.ndarray) -> dict[str, Any]:
    """The judge's verdict on images asked for `cond`: style/genre accuracy, mean score, fd_judge."""
    return judge_figures(read_samples(judge, images, cond), FrechetReference(reference_features))


def high_low_scores(gen, judge, cond: Conditions, *, seed: int, desc: str | None = None,
                    **sampling) -> tuple[np.ndarray, np.ndarray]:
    """Score control: the conditions asked for SCORE_HIGH and for SCORE_LOW in one batch → the judged
    scores (n,) of each half. `sampling`: gen.sample's guidance, temperature and top_k."""
    n = len(cond)
    asked = gen.sample(styles=cond.styles * 2, genres=cond.genres * 2, scores=[SCORE_HIGH] * n + [SCORE_LOW] * n,
                       seed=seed, desc=desc, **sampling)
    scores = judge_images(judge, gen.decode(asked))["scores"].astype(np.float64)  # (2n,)
    return scores[:n], scores[n:]


def judged_high_low(gen, judge, cond: Conditions, *, seed: int, desc: str | None = None, **sampling) -> tuple[float, float]:
    """The mean judged score of the conditions asked for SCORE_HIGH and for SCORE_LOW (`high_low_scores`)."""
    high, low = high_low_scores(gen, judge, cond, seed=seed, desc=desc, **sampling)
    return float(high.mean()), float(low.mean())


def generation_figures(
    rows: Mapping[str, Verdicts], reference: FrechetReference, *, score_pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    judge_style_acc: float | None, conditions: np.ndarray | None = None, seeds: np.ndarray | None = None,
) -> dict[str, dict[str, float | None]]:
    """Every row's quality figures on the chosen (condition, seed) samples (None: all); each
    generator's score control (`score_pairs[row]`: judged scores asked high / low, (k, n) each) and
    style_acc_vs_real (over the judge's accuracy on real val images, held fixed); and each RQ
    row's fd_position (0 = the real-image floor `real_train`, 1 = the independent-codes baseline
    `rq_marginal`)."""
    out: dict[str, dict[str, float | None]] = {name: judge_figures(v, reference, conditions, seeds) for name, v in rows.items()}
    for name, pair in score_pairs.items():
        high, low = (float(take(s, conditions, seeds).mean()) for s in pair)
        out[name].update(score_high=high, score_low=low, score_control=high - low)
    floor, baseline = out["real_train"]["fd_judge"], out["rq_marginal"]["fd_judge"]
    for name, row in out.items():
        if name in BASELINE_ROWS:
            continue
        if judge_style_acc and "style_acc" in row:
            row["style_acc_vs_real"] = row["style_acc"] / judge_style_acc
        if name.startswith("rq_"):  # against the RQ branch's own baseline: an SD row's figures stay the SD branch's
            row["fd_position"] = (row["fd_judge"] - floor) / (baseline - floor) if baseline != floor else None
    return out


def generation_intervals(
    rows: Mapping[str, Verdicts], reference: FrechetReference, *, score_pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    judge_style_acc: float | None, seed: int, replicates: int = REPLICATES,
) -> dict[str, dict[str, dict[str, float]]]:
    """{row: {figure: {"lo", "hi"}}}: each figure of `generation_figures`, its 95% percentile
    bootstrap over the n conditions and k seeds of the rows (every row resampled alike, so a ratio's
    parts move together). The Fréchet figures (fd_judge, fd_position) are shifted by the
    bootstrap's bias estimate: duplicated samples inflate a Fréchet distance, so their raw
    percentile interval would sit above the point estimate."""
    n_seeds, n_conditions = rows["rq_prior"].scores.shape

    def flat(figures: Mapping[str, Mapping[str, float | None]]) -> dict[tuple[str, str], float | None]:
        return {(row, name): value for row, values in figures.items() for name, value in values.items()}

    def statistic(conditions: np.ndarray, seeds: np.ndarray) -> dict[tuple[str, str], float | None]:
        return flat(generation_figures(rows, reference, score_pairs=score_pairs, judge_style_acc=judge_style_acc,
                                       conditions=conditions, seeds=seeds))

    point = flat(generation_figures(rows, reference, score_pairs=score_pairs, judge_style_acc=judge_style_acc))
    debias = {key: value for key, value in point.items() if key[1] in FRECHET_FIGURES and value is not None}
    intervals = bootstrap_intervals(statistic, n_conditions=n_conditions, n_seeds=n_seeds, replicates=replicates, seed=seed,
                                    debias=debias)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (row, name), interval in intervals.items():
        if name == "fd_judge":  # a distance: the shift must not take it below 0
            interval = {"lo": max(interval["lo"], 0.0), "hi": max(interval["hi"], 0.0)}
        out.setdefault(row, {})[name] = interval
    return out


def evaluate_rq(gen, train_codes: torch.Tensor, cond: Conditions, settings: SamplingSettings, judge, *, seeds: Sequence[int]):
    """The RQ rows (rq_prior, rq_prior_norefine, rq_marginal) on `cond`, once per sampling seed →
    (their Verdicts, the judged scores asked high / low (k, n) each, seconds per image, the first
    seed's first PICTURE_COLUMNS images of each row)."""
    n, kw = len(cond), settings.sampling
    per_seed: dict[str, list[Verdicts]] = {"rq_prior": [], "rq_prior_norefine": [], "rq_marginal": []}
    high, low, shown = [], [], {}
    sampling = raw_decoding = refining = 0.0
    for j, seed in enumerate(seeds):
        step = f"seed {j + 1}/{len(seeds)}"
        started = time.perf_counter()
        codes = gen.sample(styles=cond.styles, genres=cond.genres, scores=cond.scores, seed=seed, desc=f"sample codes, {step}", **kw)
        sampled = time.perf_counter()
        raw = gen.decode(codes, refine=False)
        decoded = time.perf_counter()
        refined = gen.decode(codes, refine=True)
        refining += time.perf_counter() - decoded
        sampling, raw_decoding = sampling + sampled - started, raw_decoding + decoded - sampled
        images = {"rq_prior": refined, "rq_prior_norefine": raw, "rq_marginal": gen.generate_marginal(train_codes, n=n, seed=seed)}
        for name, batch in images.items():
            per_seed[name].append(read_samples(judge, batch, cond))
        shown = shown or {name: batch[:PICTURE_COLUMNS] for name, batch in images.items()}
        pair = high_low_scores(gen, judge, cond, seed=seed + 1, desc=f"sample at two scores, {step}", **kw)
        high.append(pair[0])
        low.append(pair[1])
    count = n * len(seeds)
    seconds = {"rq_prior": (sampling + refining) / count, "rq_prior_norefine": (sampling + raw_decoding) / count}
    verdicts = {name: Verdicts.stack(v) for name, v in per_seed.items()}
    return verdicts, (np.stack(high), np.stack(low)), seconds, shown


def score_rows(gen, cond: Conditions, settings: SamplingSettings) -> list[torch.Tensor]:
    """The first PICTURE_COLUMNS conditions asked for each of PICTURE_SCORES: one uint8 row (k, 3, H, W) per score."""
    k = min(PICTURE_COLUMNS, len(cond))
    asked = gen.sample(styles=cond.styles[:k] * len(PICTURE_SCORES), genres=cond.genres[:k] * len(PICTURE_SCORES),
                       scores=[s for s in PICTURE_SCORES for _ in range(k)], seed=settings.seed + 2, desc="sample score rows",
                       **settings.sampling)
    by_score = gen.decode(asked)  # (len(PICTURE_SCORES)·k, 3, H, W)
    return [by_score[i * k : (i + 1) * k] for i in range(len(PICTURE_SCORES))]


PROGRESSIVE_SAMPLES = 4  # samples in the progressive picture


def progressive_samples(gen, cond: Conditions, settings: SamplingSettings):
    """Samples decoded from their first 1, 2, … L levels, then refined: one picture row per sample."""

    k = min(PROGRESSIVE_SAMPLES, len(cond))
    codes = gen.sample(styles=cond.styles[:k], genres=cond.genres[:k], scores=cond.scores[:k], seed=settings.seed + 4,
                       desc="sample progressive", **settings.sampling)
    levels = gen.rqvae.levels
    columns = [gen.decode(codes, refine=False, levels=n) for n in range(1, levels + 1)] + [gen.decode(codes)]
    sides = gen.rqvae.level_sides(gen.grid_hw[0])
    labels = [f"level 1\n({sides[0]}x{sides[0]})" if n == 1 else f"levels 1-{n}\n(+{sides[n - 1]}x{sides[n - 1]})"
              for n in range(1, levels + 1)]  # plain ASCII: the picture font has no superscripts or dashes
    rows = [[_pil_row(column[i : i + 1])[0] for column in columns] for i in range(k)]
    names = [f"{style.replace('_', ' ')}\n{genre}" for style, genre in zip(cond.styles[:k], cond.genres[:k])]
    return labelled_grid(rows, row_labels=names, col_labels=[*labels, "refined"])


def most_frequent(names: Sequence[str], count: int) -> list[str]:
    """The `count` most frequent non-empty names, ties in order of first appearance."""
    return [name for name, _ in Counter(n for n in names if n).most_common(count)]


def style_genre_picture(gen, val_cond: Conditions, settings: SamplingSettings):
    """The RQ generator at score GRID_SCORE, one sample per cell: the val split's most frequent styles
    (rows) × most frequent genres (columns), one seed → a labelled PIL grid."""

    styles, genres = most_frequent(val_cond.styles, GRID_STYLES), most_frequent(val_cond.genres, GRID_GENRES)
    codes = gen.sample(styles=[s for s in styles for _ in genres], genres=genres * len(styles),
                       scores=[GRID_SCORE] * (len(styles) * len(genres)), seed=settings.seed + 3,
                       desc="sample style × genre", **settings.sampling)
    images = gen.decode(codes)  # (S·G, 3, H, W), style by style
    rows = [_pil_row(images[r * len(genres) : (r + 1) * len(genres)]) for r in range(len(styles))]
    labels = [textwrap.fill(s.replace("_", " "), 14) for s in styles]  # the label column is 90 px wide
    return labelled_grid(rows, row_labels=labels, col_labels=[g.replace("_", " ") for g in genres])


def evaluate_sd(
    config_name: str, cond: Conditions, *, seeds: Sequence[int], base_dir, lora_dir, quant_dir, steps: int, size: int,
    guidance: float, compute_dtype: str, cpu_dtype: str, judge,
) -> tuple[Verdicts, tuple[np.ndarray, np.ndarray], float, torch.Tensor]:
    """One SD configuration, once per sampling seed (seed + i for the i-th condition), on the
    conditions' captions asking for each condition's rating, then for SCORE_HIGH and SCORE_LOW with
    the same noise (a paired comparison) → (Verdicts, judged scores asked high / low (k, n) each,
    seconds per image, the first seed's first PICTURE_COLUMNS uint8 images)."""
    from squeezegen.device import default_device
    from squeezegen.memory.probes import free_memory
    from squeezegen.sd.configurations import build_pipeline, generate_measured

    device = default_device()
    bundle = build_pipeline(config_name, base_dir=base_dir, lora_dir=lora_dir, quant_dir=quant_dir, device=device,
                            compute_dtype=compute_dtype, cpu_dtype=cpu_dtype)
    n = len(cond)
    asked = [rated_caption(c, s) for c, s in zip(cond.captions, cond.scores)]
    high, low = ([rated_caption(c, score) for c in cond.captions] for score in (SCORE_HIGH, SCORE_LOW))
    prompts, noise_seeds = [], []
    for seed in seeds:
        prompts += asked + high + low
        noise_seeds += [seed + i for i in range(n)] * 3
    result = generate_measured(bundle, prompts, noise_seeds, steps=steps, size=size, guidance=guidance)
    seconds = float(np.mean(result.seconds))
    images = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in result.images])).permute(0, 3, 1, 2)
    del bundle, result
    free_memory(device)
    per_seed = images.reshape(len(seeds), 3, n, *images.shape[1:])  # (k, asked | high | low, n, 3, S, S) uint8
    verdicts = Verdicts.stack([read_samples(judge, batch[0], cond) for batch in per_seed])
    judged_scores = [judge_images(judge, batch[1:].flatten(0, 1))["scores"].astype(np.float64) for batch in per_seed]
    pair = (np.stack([s[:n] for s in judged_scores]), np.stack([s[n:] for s in judged_scores]))
    return verdicts, pair, seconds, per_seed[0, 0, :PICTURE_COLUMNS]


def sd_size_figures(base_dir: Path, lora_dir: Path, quant_dir: Path) -> dict[str, dict[str, int]]:
    """Parameters and bytes on disk of the SD pipelines: the base, base + LoRA, and compressed."""
    from safetensors import safe_open

    from squeezegen.files import folder_bytes

    params = 0
    for part in ("unet", "text_encoder", "vae"):
        for file in sorted((base_dir / part).glob("*.safetensors")):
            with safe_open(str(file), "pt") as f:
                params += sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    base_bytes = sum(folder_bytes(base_dir / p) for p in ("unet", "text_encoder", "vae"))
    return {
        "sd_base": {"params": params, "bytes": base_bytes},
        "sd": {"params": params, "bytes": base_bytes + folder_bytes(lora_dir)},
        "sd_compressed": {"params": params, "bytes": folder_bytes(quant_dir) + folder_bytes(base_dir / "vae")},
    }


def _pil_row(images: torch.Tensor) -> list:
    from PIL import Image

    return [Image.fromarray(im.permute(1, 2, 0).cpu().numpy()) for im in images]


def run_generation(cfg, *, processed_dir: Path, judge_dir: Path, prior_dir: Path, rqvae_dir: Path, refiner_dir: Path,
                   base_dir: Path, lora_dir: Path, quant_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every generator on the same n val conditions × k sampling seeds → (`gen` metrics, {file name: PIL picture})."""
    from squeezegen.judge import load_judge
    from squeezegen.rq.generate import RQGenerator

    judge = load_judge(judge_dir)
    val_images, val_cond = load_split(processed_dir, "val")
    train_images, train_cond = load_split(processed_dir, "train")
    n = min(cfg.evaluate.gen_samples, len(val_cond), len(train_cond))
    seeds = sampling_seeds(cfg.seed, cfg.evaluate.gen_seeds)
    cond = val_cond.first(n)
    reference = FrechetReference(judge_images(judge, val_images)["features"])  # every val image
    real_val = judge_figures(read_samples(judge, val_images, val_cond), reference)
    verdicts = {"real_train": read_samples(judge, train_images[:n], train_cond.first(n))}  # one "seed": nothing sampled

    gen = RQGenerator.load(prior_dir, rqvae_dir, refiner_dir)
    train_codes = gen.encode(train_images)  # the marginal baseline's frequencies
    prior_cfg = cfg.prior
    settings = SamplingSettings(seed=cfg.seed, guidance_scale=prior_cfg.guidance_scale, score_guidance_scale=prior_cfg.score_guidance_scale,
                                temperature=prior_cfg.temperature, top_k=prior_cfg.top_k)
    rq_verdicts, rq_pair, seconds, shown = evaluate_rq(gen, train_codes, cond, settings, judge, seeds=seeds)
    verdicts.update(rq_verdicts)
    score_pairs = {"rq_prior": rq_pair}
    for name, (config_name, with_lora) in SD_ROWS.items():
        verdicts[name], score_pairs[name], seconds[name], shown[name] = evaluate_sd(
            config_name, cond, seeds=seeds, base_dir=base_dir, lora_dir=lora_dir if with_lora else None, quant_dir=quant_dir,
            steps=cfg.sd.infer_steps, size=cfg.data.sd_size, guidance=cfg.benchmark.guidance_scale,
            compute_dtype=cfg.benchmark.compute_dtype, cpu_dtype=cfg.benchmark.cpu_dtype, judge=judge,
        )

    figures = generation_figures(verdicts, reference, score_pairs=score_pairs, judge_style_acc=real_val.get("style_acc"))
    intervals = generation_intervals(verdicts, reference, score_pairs=score_pairs, judge_style_acc=real_val.get("style_acc"),
                                     seed=cfg.seed)
    metrics: dict[str, Any] = {
        "n": n,
        "n_seeds": len(seeds),
        "judge_on_val": {"style_acc": real_val.get("style_acc"), "genre_acc": real_val["genre_acc"], "score_mean": real_val["score_mean"]},
        **{name: {**figures[name], "ci95": intervals.get(name, {})} for name in verdicts},
    }
    for name, value in seconds.items():
        metrics[name]["seconds_per_image"] = value
    rq = metrics["rq_prior"]
    rq["images_per_s"] = 1.0 / rq["seconds_per_image"]
    rq["sampling"] = settings.sampling
    rq["design"] = {"prior_kind": gen.prior.spec.kind, "rqvae_scales": gen.rqvae.level_sides(gen.grid_hw[0]),
                    "codes_per_image": gen.prior.spec.tokens}
    sizes, disk = gen.params, gen.bytes_on_disk
    rq.update(params=sum(sizes.values()), bytes=sum(disk.values()), params_by_model=sizes)
    metrics["rq_prior_norefine"].update(params=sizes["prior"] + sizes["rqvae"], bytes=disk["prior"] + disk["rqvae"])
    metrics["rq_marginal"].update(params=sizes["rqvae"] + sizes["refiner"], bytes=disk["rqvae"] + disk["refiner"])
    for name, size_figures in sd_size_figures(base_dir, lora_dir, quant_dir).items():
        metrics[name].update(size_figures)

    shown_conditions = cond.first(PICTURE_COLUMNS)
    labels = [f"{c} ({s:.0f})" for c, s in zip(shown_conditions.captions, shown_conditions.scores)]
    rows = {"real (val)": val_images[:PICTURE_COLUMNS], "RQ prior\n+ refiner": shown["rq_prior"],
            "RQ prior\nno refiner": shown["rq_prior_norefine"], "independent\ncodes + ref.": shown["rq_marginal"],
            "SD base\n(no LoRA)": shown["sd_base"], "SD + LoRA": shown["sd"], "SD Q4_K\n+ int8 CLIP": shown["sd_compressed"]}
    pictures = {
        "generation.png": labelled_grid([_pil_row(r) for r in rows.values()], row_labels=list(rows), col_labels=labels),
        "rq_scores.png": labelled_grid([_pil_row(r) for r in score_rows(gen, cond, settings)],
                                       row_labels=[f"score {s:.0f}" for s in PICTURE_SCORES], col_labels=shown_conditions.captions),
        "style_genre.png": style_genre_picture(gen, val_cond, settings),
        "rq_progressive.png": progressive_samples(gen, cond, settings),
    }
    return metrics, pictures
