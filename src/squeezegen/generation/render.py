"""Generation, rendered: the report's generation section from evaluate's `gen` metrics (`measure.py`)."""

from __future__ import annotations

from typing import Any, Mapping

from squeezegen.formatting import fmt_mib, fmt_num
from squeezegen.generation.measure import GRID_GENRES, GRID_SCORE, GRID_STYLES, SCORE_HIGH, SCORE_LOW
from squeezegen.stats import REPLICATES

GENERATOR_ROWS = (  # (key, label) in table order
    ("real_train", "real images (train split): the floor"),
    ("rq_prior", "**RQ generator** (prior + RQ-VAE + refiner)"),
    ("rq_prior_norefine", "RQ generator without refiner"),
    ("rq_marginal", "independent codes + RQ-VAE + refiner: the baseline"),
    ("sd_base", "SD base, no LoRA"),
    ("sd", "SD + aesthetic LoRA, uncompressed"),
    ("sd_compressed", "SD + aesthetic LoRA, Q4_K UNet + int8 CLIP + CPU VAE"),
)


def with_interval(row: Mapping[str, Any], figure: str, spec: str) -> str:
    """`0.42 [0.35, 0.49]`: a row's figure and its 95% interval (the bare figure without one, `—` without either)."""
    value, interval = row.get(figure), row.get("ci95", {}).get(figure)
    if value is None or interval is None:
        return fmt_num(value, spec)
    return f"{value:{spec}} [{interval['lo']:{spec}}, {interval['hi']:{spec}}]"


def _design_sentence(design: Mapping[str, Any]) -> str:
    """What the RQ generator is: its prior's kind and the RQ-VAE's levels."""
    sides = design.get("rqvae_scales") or []
    if not sides:
        return ""
    grids = " → ".join(f"{s}×{s}" for s in sides) if len(set(sides)) > 1 else f"{len(sides)} levels of {sides[0]}×{sides[0]}"
    how = ("a next-scale prior draws one level per pass" if design.get("prior_kind") == "next_scale"
           else "an RQ-Transformer draws them position by position, level by level")
    return f"**Design.** The RQ-VAE's codes are {grids} ({design.get('codes_per_image')} codes per image); {how}."


def _standing_table(gen: Mapping[str, Any]) -> str:
    """Score control and standing of every generator: asked SCORE_HIGH vs SCORE_LOW (SD asks through
    its caption, ", rated 8 of 10"; the same noise for both), style accuracy against the judge's on
    real images, and (for the RQ rows) fd_judge's position between the real floor (0) and the
    independent-codes baseline (1)."""
    rows = [f"| generator | judged, asked {SCORE_HIGH:.0f} | judged, asked {SCORE_LOW:.0f} | score control "
            "| style acc / judge's on real | fd position |",
            "|---|---|---|---|---|---|"]
    for key, label in GENERATOR_ROWS:
        m = gen.get(key, {})
        if "score_control" not in m:
            continue
        rows.append(f"| {label} | {with_interval(m, 'score_high', '.1f')} | {with_interval(m, 'score_low', '.1f')} "
                    f"| {with_interval(m, 'score_control', '+.1f')} | {with_interval(m, 'style_acc_vs_real', '.2f')} "
                    f"| {with_interval(m, 'fd_position', '.2f')} |")
    return "\n".join(rows)


def generation_markdown(gen: dict[str, Any], *, judge: dict[str, Any], profile: str) -> str:
    """The report's generation section from evaluate's `gen` metrics and metrics/judge.json."""
    rows = ["| generator | params | on disk | s / image | style acc | genre acc | judged score | fd_judge |",
            "|---|---|---|---|---|---|---|---|"]
    for key, label in GENERATOR_ROWS:
        m = gen.get(key, {})
        rows.append(f"| {label} | {fmt_num(m.get('params'), ',')} | {fmt_mib(m.get('bytes'), '.2f', ' MiB')} | {fmt_num(m.get('seconds_per_image'), '.3f')} "
                    f"| {with_interval(m, 'style_acc', '.2f')} | {with_interval(m, 'genre_acc', '.2f')} "
                    f"| {with_interval(m, 'score_mean', '.1f')} | {with_interval(m, 'fd_judge', '.2f')} |")
    rq, val = gen.get("rq_prior", {}), gen.get("judge_on_val", {})
    sampling = rq.get("sampling", {})
    n, n_seeds = gen.get("n", "?"), gen.get("n_seeds", 1)
    toy = ("\n\nOn the toy profile the SD base is a tiny SD-architecture pipeline pretrained here on the toy train "
           "split (fetch_base: its VAE, then its UNet), and the LoRA learns the ratings from the captions." if profile == "toy" else "")
    return "\n\n".join([
        "## C. Generation: the RQ generator next to Stable Diffusion",
        f"Every generator is asked for the same {n} conditions, once per sampling seed ({n_seeds} seeds): the first "
        f"validation images' style, genre and aesthetic score (SD gets their captions, e.g. \"a cubist portrait painting\"). "
        f"A judge trained on real images only (val style accuracy {fmt_num(judge.get('style_acc'), '.2f')}, genre accuracy "
        f"{fmt_num(judge.get('genre_acc'), '.2f')}, score R² {fmt_num(judge.get('score_r2'), '.2f')}) reads every sample. `fd_judge` "
        f"is the Fréchet distance to the validation images in the judge's feature space — not FID; lower is closer to real. "
        f"On real validation images the judge reads the style {fmt_num(val.get('style_acc'), '.2f')} and the genre "
        f"{fmt_num(val.get('genre_acc'), '.2f')} of the time.{toy}",
        f"Each figure is followed by its 95% interval [lo, hi]: a percentile bootstrap ({REPLICATES} replicates) over the "
        f"{n} conditions × {n_seeds} seeds — conditions and seeds drawn with replacement, every figure recomputed on the "
        f"samples drawn (the real-image row has no seeds; the judge's own accuracy on real images is held fixed). "
        f"Duplicated samples inflate a Fréchet distance, so the `fd_judge` and fd-position intervals are shifted by the "
        f"bootstrap's estimate of that bias.",
        "\n".join(rows),
        _design_sentence(rq.get("design", {})),
        f"**Score control.** The RQ generator samples with classifier-free guidance {fmt_num(sampling.get('guidance_scale'), 'g')} "
        f"and score guidance {fmt_num(sampling.get('score_guidance_scale'), 'g')} (toward the asked score, away from 100 − score). "
        f"Asked for a score of {SCORE_HIGH:.0f}, its samples are judged "
        f"{with_interval(rq, 'score_high', '.1f')}; asked for {SCORE_LOW:.0f}, {with_interval(rq, 'score_low', '.1f')} "
        f"(difference {with_interval(rq, 'score_control', '+.1f')} points). Its style accuracy is "
        f"{with_interval(rq, 'style_acc_vs_real', '.2f')} times the judge's on real images, and its `fd_judge` sits at "
        f"{with_interval(rq, 'fd_position', '.2f')} of the way from the real-image floor (0) to the independent-codes baseline (1).",
        _standing_table(gen),
        "![one row per generator, same conditions](evaluate/generation.png)",
        "The RQ generator asked for the same styles and genres at three aesthetic scores:",
        "![RQ generator at scores 20, 50, 80](evaluate/rq_scores.png)",
        f"The RQ generator asked for a score of {GRID_SCORE:.0f}, one sample per cell (one seed): the validation split's "
        f"most frequent styles (rows, up to {GRID_STYLES}) × its most frequent genres (columns, up to {GRID_GENRES}):",
        f"![RQ generator, style × genre at score {GRID_SCORE:.0f}](evaluate/style_genre.png)",
        "Samples decoded from their first levels only (coarse to fine), then refined:",
        "![RQ generator samples, level by level](evaluate/rq_progressive.png)",
    ])
