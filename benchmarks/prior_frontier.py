"""Score control against training time and style: the toy prior's frontier.

    python benchmarks/prior_frontier.py [--steps 500 1000 1500] [--score-guidance 0 3.5 6]
                                        [--conditions 96] [--seeds 1 2] [--out benchmarks/results/prior_frontier_toy.json]
                                        [--root .]

Needs the DAG's outputs (`dvc repro`): data/processed, models/rqvae, models/refiner and models/judge.
For each training length it trains a prior exactly as the train_prior stage does (params.yaml's
`prior` section and profile; only `max_steps` changes, so the run at the profile's own length
reproduces `models/prior`), then, for each score guidance scale, asks the RQ generator for the
first `--conditions` validation conditions at a score of 80 and of 30 (once per seed) and reads
the judged gap, as evaluate does; style accuracy and fd_judge come from samples asked for the
conditions themselves. It writes the figures as JSON (training seconds under `perf`) and a
markdown table next to it.

Why it exists: score control, training time and style accuracy pull against each other through
score guidance; this measures the whole frontier on one machine, in one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from squeezegen.config import load_config  # noqa: E402
from squeezegen.data.tensors import load_image_tensors  # noqa: E402
from squeezegen.files import atomic_write_json, atomic_write_text  # noqa: E402
from squeezegen.generation.measure import Conditions, judged, judged_high_low, load_split  # noqa: E402
from squeezegen.judge import judge_images, load_judge  # noqa: E402
from squeezegen.rq.generate import RQGenerator, encode_codes  # noqa: E402
from squeezegen.rq.model import load_rqvae  # noqa: E402
from squeezegen.rq.prior_train import condition_tensors, load_conditions, prior_data, prior_spec, train_prior  # noqa: E402
from squeezegen.rq.refiner import load_refiner  # noqa: E402


def _times(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}×"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[500, 1000, 1500])
    parser.add_argument("--score-guidance", type=float, nargs="+", default=[0.0, 3.5, 6.0])
    parser.add_argument("--conditions", type=int, default=96, help="validation conditions asked for (evaluate uses 48)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="sampling seeds of the 80-vs-30 comparison")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/prior_frontier_toy.json")
    parser.add_argument("--root", type=Path, default=ROOT, help="the project whose params, data and models to use")
    args = parser.parse_args(argv)

    root = args.root
    processed = root / "data/processed"
    cfg = load_config(root / "params.yaml")
    pc = cfg.prior
    rqvae = load_rqvae(root / "models/rqvae").requires_grad_(False)
    refiner = load_refiner(root / "models/refiner").eval()
    judge = load_judge(root / "models/judge")
    train_images = load_image_tensors(processed, "train")
    train_codes = encode_codes(rqvae, train_images)  # in the RQ-VAE's layout
    styles, genres, scores = load_conditions(processed, "train")
    val_images, val_cond = load_split(processed, "val")
    reference = judge_images(judge, val_images)["features"]
    judge_style_acc = judged(judge, val_images, val_cond, reference)["style_acc"]
    n = min(args.conditions, len(val_cond))
    cond = Conditions(val_cond.styles[:n], val_cond.genres[:n], val_cond.scores[:n])
    side = train_images.shape[-1] // rqvae.downsample

    rows, timings = [], {}
    for steps in args.steps:
        run_cfg = dataclasses.replace(pc, max_steps=steps)
        spec = prior_spec(run_cfg, rqvae=rqvae, styles=styles, genres=genres, grid_hw=(side, side))
        with tempfile.TemporaryDirectory() as checkpoints:
            started = time.perf_counter()
            prior = train_prior(cfg=run_cfg, spec=spec, seed=cfg.seed, codes=prior_data(spec, rqvae, train_codes),
                                conditions=condition_tensors(spec, styles, genres, scores),
                                checkpoint_dir=Path(checkpoints), fingerprint=f"frontier-{steps}").model.eval()
            timings[str(steps)] = round(time.perf_counter() - started, 1)
        gen = RQGenerator(prior, rqvae, refiner, {})
        for guidance in args.score_guidance:
            kw = dict(guidance_scale=pc.guidance_scale, score_guidance_scale=guidance, temperature=pc.temperature, top_k=pc.top_k)
            gaps = [high - low for high, low in (judged_high_low(gen, judge, cond, seed=seed, **kw) for seed in args.seeds)]
            verdict = judged(judge, gen.decode(gen.sample(styles=cond.styles, genres=cond.genres, scores=cond.scores,
                                                          seed=cfg.seed, **kw)), cond, reference)
            row = {"steps": steps, "score_guidance_scale": guidance, "score_control": float(np.mean(gaps)),
                   "score_control_by_seed": gaps, "style_acc": verdict["style_acc"],
                   "style_acc_vs_real": verdict["style_acc"] / judge_style_acc if judge_style_acc else None,
                   "fd_judge": verdict["fd_judge"]}
            rows.append(row)
            print(f"steps {steps:5d}  score guidance {guidance:4.1f}: gap {row['score_control']:+.1f} "
                  f"({', '.join(f'{g:+.1f}' for g in gaps)}), style {row['style_acc']:.3f} "
                  f"({_times(row['style_acc_vs_real'])} the judge's), fd_judge {row['fd_judge']:.1f}", flush=True)

    result = {"profile": cfg.profile, "conditions": n, "seeds": args.seeds, "guidance_scale": pc.guidance_scale,
              "judge_style_acc_on_val": judge_style_acc, "rows": rows, "perf": {"train_seconds_by_steps": timings}}
    atomic_write_json(args.out, result)
    table = ["| prior steps | train s | score guidance | judged 80 − 30 | style acc (× judge) | fd_judge |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['steps']} | {timings[str(r['steps'])]:.0f} | {r['score_guidance_scale']:g} | {r['score_control']:+.1f} | "
              f"{r['style_acc']:.3f} ({_times(r['style_acc_vs_real'])}) | {r['fd_judge']:.1f} |" for r in rows]
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(table) + "\n")
    print("\n".join(table))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
