"""Sampling speed of the two priors, in one run at the same batch: the RQ-Transformer (one pass per
position and level) against the next-scale prior (one pass per scale).

    python benchmarks/prior_speed.py [--batch 1 8 96] [--repeats 3] [--out benchmarks/results/prior_speed_toy.json] [--root .]

Both priors are built at the sizes params.yaml gives the profile (`profiles.<p>.prior`), each over
the RQ-VAE it needs (equal levels for the RQ-Transformer, a pyramid for the next-scale prior), with
the refiner of the profile's size; weights are random (how fast a network runs does not depend on
its weights), so the benchmark needs no trained model. Each prior samples each `--batch` of conditions
with the configured classifier-free and score guidance (every branch in one batch, as evaluate
does); the figures are the best of `--repeats` runs: codes per second (the prior alone) and
images per second end to end (codes → RQ-VAE decoder → refiner), and their ratio next-scale /
RQ-Transformer. Writes JSON and a markdown table next to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from squeezegen.config import load_config  # noqa: E402
from squeezegen.files import atomic_write_json, atomic_write_text  # noqa: E402
from squeezegen.rq.generate import RQGenerator  # noqa: E402
from squeezegen.rq.prior import build_prior  # noqa: E402
from squeezegen.rq.prior_train import prior_spec  # noqa: E402
from squeezegen.rq.recon_train import build_rqvae  # noqa: E402
from squeezegen.rq.refiner import Refiner  # noqa: E402

STYLES = tuple(f"style {i}" for i in range(27))
GENRES = tuple(f"genre {i}" for i in range(7))
DESIGNS = (("rq_transformer", "equal"), ("next_scale", "pyramid"))  # (prior.kind, rqvae.scales)


def build_generator(cfg, kind: str, scales: str) -> RQGenerator:
    """An RQ generator of the profile's sizes with random weights: the RQ-VAE, the prior of `kind`, the refiner."""
    torch.manual_seed(cfg.seed)
    size = cfg.data.rq_size
    rqvae = build_rqvae(dataclasses.replace(cfg.rqvae, scales=scales), image_size=size).eval()
    side = size // cfg.rqvae.downsample
    spec = prior_spec(dataclasses.replace(cfg.prior, kind=kind), rqvae=rqvae, styles=STYLES, genres=GENRES, grid_hw=(side, side))
    refiner = Refiner.build(channels=cfg.refiner.channels, image_size=size).eval()
    return RQGenerator(build_prior(spec).eval(), rqvae, refiner, {})


def time_generator(gen: RQGenerator, *, batch: int, repeats: int, sampling: dict) -> dict[str, Any]:
    """Best-of-`repeats` seconds to sample `batch` codes and to decode + refine them."""
    styles, genres = [STYLES[i % len(STYLES)] for i in range(batch)], [GENRES[i % len(GENRES)] for i in range(batch)]
    scores = [float(20 + 60 * (i % 2)) for i in range(batch)]
    sample_s, decode_s = [], []
    for seed in range(repeats):
        started = time.perf_counter()
        codes = gen.sample(styles=styles, genres=genres, scores=scores, seed=seed, **sampling)
        sampled = time.perf_counter()
        gen.decode(codes)
        sample_s.append(sampled - started)
        decode_s.append(time.perf_counter() - sampled)
    codes_per_image = gen.prior.spec.tokens
    best_sample, best_total = min(sample_s), min(s + d for s, d in zip(sample_s, decode_s))
    return {"codes_per_image": codes_per_image, "passes": gen.prior.spec.levels if gen.prior.spec.kind == "next_scale"
            else gen.prior.spec.positions * gen.prior.spec.levels, "sample_seconds": best_sample,
            "codes_per_s": batch * codes_per_image / best_sample, "images_per_s_prior": batch / best_sample,
            "images_per_s_end_to_end": batch / best_total}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 96],
                        help="conditions sampled at once (`squeezegen sample -n`; evaluate asks for 96 on the toy profile)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/prior_speed_toy.json")
    parser.add_argument("--root", type=Path, default=ROOT, help="the project whose params.yaml to use")
    args = parser.parse_args(argv)

    cfg = load_config(args.root / "params.yaml")
    pc = cfg.prior
    sampling = dict(guidance_scale=pc.guidance_scale, score_guidance_scale=pc.score_guidance_scale, temperature=pc.temperature,
                    top_k=pc.top_k)
    generators = {kind: build_generator(cfg, kind, scales) for kind, scales in DESIGNS}
    rows, speedup = [], {}
    with torch.inference_mode():
        for batch in args.batch:
            by_kind = {}
            for kind, scales in DESIGNS:
                by_kind[kind] = {"batch": batch, "prior": kind, "rqvae_scales": scales,
                                 **time_generator(generators[kind], batch=batch, repeats=args.repeats, sampling=sampling)}
                print(f"batch {batch:3d}  {kind:15s} ({scales}): {by_kind[kind]['codes_per_s']:,.0f} codes/s, "
                      f"{by_kind[kind]['images_per_s_end_to_end']:.1f} images/s end to end", flush=True)
            rows += list(by_kind.values())
            slow, fast = by_kind["rq_transformer"], by_kind["next_scale"]
            speedup[str(batch)] = {"images_per_s_prior": fast["images_per_s_prior"] / slow["images_per_s_prior"],
                                   "images_per_s_end_to_end": fast["images_per_s_end_to_end"] / slow["images_per_s_end_to_end"]}
    result = {"profile": cfg.profile, "batches": args.batch, "repeats": args.repeats, "threads": torch.get_num_threads(),
              "sampling": sampling, "perf": {"rows": rows, "next_scale_over_rq_transformer": speedup}}
    atomic_write_json(args.out, result)
    table = ["| batch | prior | RQ-VAE levels | codes / image | passes | codes / s | images / s (prior) | images / s (end to end) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        table.append(f"| {row['batch']} | {row['prior']} | {row['rqvae_scales']} | {row['codes_per_image']} | {row['passes']} "
                     f"| {row['codes_per_s']:,.0f} | {row['images_per_s_prior']:.1f} | {row['images_per_s_end_to_end']:.1f} |")
        if row["prior"] == "next_scale":
            ratio = speedup[str(row["batch"])]
            table.append(f"| {row['batch']} | **next_scale / rq_transformer** | | | | | **{ratio['images_per_s_prior']:.1f}×** "
                         f"| **{ratio['images_per_s_end_to_end']:.1f}×** |")
    note = (f"{cfg.profile} profile sizes, random weights, guidance {pc.guidance_scale:g} and score guidance "
            f"{pc.score_guidance_scale:g} (three branches per condition, in one batch), best of {args.repeats}, "
            f"{torch.get_num_threads()} CPU threads. Codes/s counts the codes each prior draws: the next-scale prior draws fewer per image.")
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(table) + "\n\n" + note + "\n")
    print("next_scale / rq_transformer, images/s end to end: "
          + ", ".join(f"batch {b}: {r['images_per_s_end_to_end']:.1f}×" for b, r in speedup.items()) + f" → {args.out}")
    return result


if __name__ == "__main__":
    main()
