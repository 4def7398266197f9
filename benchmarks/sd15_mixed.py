"""Mixed K-quants on an SD 1.5-architecture pipeline (random weights): the allocation vs fixed rules.

    python benchmarks/sd15_mixed.py [--small] [--out benchmarks/results/sd15_mixed_full.json]

Builds the pipeline from SD 1.5's configs (`--small`: the toy's tiny SD-architecture pipeline, a
CPU smoke test), calibrates on `--prompts` prompts × `--steps` steps (activation importance and
the UNet inputs), estimates damage per (tensor, candidate type) on `--sensitivity-samples` of
those inputs, then allocates (a) under the budget — 330 MB of tensor data, the product's target for SD 1.5, or
`--budget-bpw` — and (b) at each baseline's own bytes: uniform Q4_K, ComfyUI-GGUF's Q4_K_M rule,
a llama.cpp Q3_K_M-shaped rule mix, uniform Q3_K. Every assignment's drift is measured on
held-out prompts at another seed: the noise prediction's relative RMSE vs the unquantized UNet,
and the PSNR of the final images (same seed). Random weights are not trained weights: the
ranking of tensors by sensitivity differs on a real fine-tuned UNet (the quantize stage with
`quantize.baselines: true` makes the same comparison there).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from squeezegen.config import load_config
from squeezegen.files import atomic_write_json
from squeezegen.metrics_files import split_perf

RESULTS = Path(__file__).resolve().parent / "results"
SEED_BUDGET_BYTES = 330_000_000  # the product's target: SD 1.5's 860M-parameter UNet in 330 MB


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the toy's tiny SD-architecture pipeline (smoke test)")
    parser.add_argument("--params", default="params.yaml", help="params file whose `quantize:` policy is used")
    parser.add_argument("--size", type=int, default=64, help="image side in px of calibration and held-out runs")
    parser.add_argument("--prompts", type=int, default=2, help="calibration prompts (as many held-out ones)")
    parser.add_argument("--steps", type=int, default=2, help="sampler steps per prompt")
    parser.add_argument("--sensitivity-samples", type=int, default=2, help="UNet inputs each damage estimate runs on")
    parser.add_argument("--sensitivity", choices=("proxy", "measured"), default="proxy")
    parser.add_argument("--types", nargs="+", default=None, choices=("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"),
                        help="candidate types of the allocation (default: quantize.candidate_types)")
    parser.add_argument("--budget-bpw", type=float, default=None,
                        help="budget of the plain allocation (default: 330 MB of tensor data; --small: 3.0 bpw)")
    parser.add_argument("--no-images", action="store_true", help="skip the final images' PSNR")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON out (default benchmarks/results/sd15_mixed_<full|small>.json)")
    return parser.parse_args(argv)


def build_pipeline(small: bool, seed: int):
    if small:
        from squeezegen.sd.tiny import build_tiny_pipeline

        return build_tiny_pipeline(seed)
    from squeezegen.sd.sd15 import build_sd15_pipeline

    return build_sd15_pipeline(seed=seed)


def main(argv=None) -> dict:
    from squeezegen.quant.gguf.io import write_unet_gguf
    from squeezegen.quant.mix.assign import estimate_mix, mixed_policy
    from squeezegen.quant.mix.baselines import compare_on_heldout, heldout_prompt_indices
    from squeezegen.quant.mix.importance import calibrate
    from squeezegen.quant.mix.knapsack import budget_from_config
    from squeezegen.sd.generate import sample_prompts
    from squeezegen.stages.quantize import quant_policy

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    q = load_config(args.params).quantize
    timings: dict[str, float] = {}
    start = time.perf_counter()
    pipe = build_pipeline(args.small, args.seed)
    timings["build_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    prompts = sample_prompts(2 * args.prompts)
    calib = calibrate(pipe, sample_prompts(args.prompts), steps=args.steps, size=args.size, seed=args.seed,
                      guidance_scale=q.calib_guidance)
    policy = dataclasses.replace(quant_policy(q), importance=calib.importance)
    timings["calibration_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    types = tuple(args.types or q.candidate_types)
    mix = estimate_mix(pipe.unet, calib.subset(args.sensitivity_samples), policy, types=types,
                       mode=args.sensitivity, validate=args.sensitivity == "measured", progress=not args.small)
    timings["sensitivity_seconds"] = time.perf_counter() - start
    allocatable = sum(c.n_params for c in mix.choices.values())
    if args.budget_bpw is None and not args.small:
        budget = SEED_BUDGET_BYTES - 1_000_000  # room for the GGUF header (its size is reported below)
    else:
        budget = budget_from_config(budget_bytes=None, budget_bpw=args.budget_bpw or 3.0,
                                    fixed_bytes=mix.fixed_bytes, allocatable_params=allocatable)
    budget_types = mix.allocate(budget)
    with tempfile.TemporaryDirectory() as tmp:  # the budget's file, to report its real size
        report = write_unet_gguf(Path(tmp) / "unet.gguf", pipe.unet.state_dict(), policy=mixed_policy(policy, budget_types),
                                 progress=False, encoded=mix.cache)
    start = time.perf_counter()
    comparison = compare_on_heldout(
        pipe, mix, policy, [prompts[i] for i in heldout_prompt_indices(args.prompts)], steps=args.steps,
        size=args.size, seed=args.seed + 1, guidance_scale=q.calib_guidance, images=not args.no_images,
        extra={"budget": budget_types})
    timings["comparison_seconds"] = time.perf_counter() - start
    comparison["budget"] |= {"budget_bytes": budget, "file_bytes": report.bytes_gguf,
                             "file_at_most_330MB": report.bytes_gguf <= SEED_BUDGET_BYTES}
    figures = {
        "arch": "tiny (toy base)" if args.small else "sd15 (random weights)",
        "unet_params": mix.n_params, "allocatable_tensors": len(mix.choices), "allocatable_params": allocatable,
        "image_px": args.size, "calib_prompts": args.prompts, "steps": args.steps,
        "calib_samples": calib.n_samples, "sensitivity_samples": min(args.sensitivity_samples, calib.n_samples),
        "sensitivity": args.sensitivity, "candidate_types": list(types), "importance": "activations",
        "results": comparison, "torch_threads": torch.get_num_threads(), **timings,
    }
    out = args.out or RESULTS / f"sd15_mixed_{'small' if args.small else 'full'}.json"
    atomic_write_json(out, split_perf(figures))  # timings under "perf"
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
