"""quantize: fuse the LoRA into the base UNet, write it as GGUF (Q4_K policy), and the 8-bit CLIP.

models/base + models/lora → models/quantized/ (unet.gguf, text_encoder/, manifest.json, written
as one folder atomically), reports/quantize/bits_per_layer.png and metrics/quantize.json. With `quantize.importance: activations` the
fused pipeline first runs on calibration prompts (quant/mix/importance.py) and E[x²] per input
channel weights every codec's search; with `quantize.budget_bpw` / `budget_bytes` each tensor
gets the type that minimizes the estimated damage to the UNet's output under that budget
(quant/mix/assign.py), and the chosen types are in the file's policy and manifest.json. With
`quantize.baselines` the metrics also compare the allocation with uniform Q4_K / Q3_K and rule
mixes at matched bytes, on held-out prompts (quant/mix/baselines.py).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import squeezegen
from squeezegen.config import Config, QuantizeConfig, load_config
from squeezegen.errors import UserError
from squeezegen.tracking import stage_run

BASE_DIR = Path("models/base")
LORA_DIR = Path("models/lora")
LORA_FILE = LORA_DIR / "pytorch_lora_weights.safetensors"
QUANT_DIR = Path("models/quantized")
REPORT_DIR = Path("reports/quantize")


def quant_policy(qcfg: QuantizeConfig):
    """The GGUF tensor policy from the `quantize:` section."""
    from squeezegen.quant.mix.policy import QuantPolicy

    return QuantPolicy(
        unet_type=qcfg.unet_type,
        fallback_type=qcfg.fallback_type,
        keep_type=qcfg.keep_type,
        keep_patterns=qcfg.keep_patterns,
        min_elements=qcfg.min_elements,
        reshape_convs=qcfg.reshape_convs,
    )


def calibration(cfg: Config):
    """The fused (fine-tuned) pipeline and its calibration run on the calibration prompts:
    activation statistics and the UNet's inputs at each step (quant/mix/importance.py)."""
    from squeezegen.device import default_device
    from squeezegen.quant.mix.importance import calibrate
    from squeezegen.sd.configurations import load_fused_pipeline
    from squeezegen.sd.generate import sample_prompts

    qcfg = cfg.quantize
    pipe = load_fused_pipeline(BASE_DIR, LORA_DIR).to(default_device())
    prompts = sample_prompts(qcfg.calib_prompts, cfg.sd.prompt_template)
    return pipe, calibrate(pipe, prompts, steps=qcfg.calib_steps, size=cfg.data.sd_size, seed=cfg.seed,
                           guidance_scale=qcfg.calib_guidance)


def budget_policy(qcfg: QuantizeConfig, policy, pipe, calib, budgeted: bool) -> tuple:
    """The damage estimate per (tensor, type) (quant/mix/assign.py), and if `budgeted` the policy
    with one type per tensor under the budget; (policy, figures, mix)."""
    from squeezegen.quant.mix.assign import estimate_mix, mixed_policy, summary
    from squeezegen.quant.mix.knapsack import budget_from_config

    mix = estimate_mix(pipe.unet, calib.subset(qcfg.sensitivity_samples), policy, types=qcfg.candidate_types,
                       mode=qcfg.sensitivity, validate=qcfg.sensitivity == "measured")
    figures = {"sensitivity": qcfg.sensitivity, "sensitivity_rank_correlation": mix.validation}
    if not budgeted:
        return policy, figures, mix
    budget = budget_from_config(budget_bytes=qcfg.budget_bytes, budget_bpw=qcfg.budget_bpw, fixed_bytes=mix.fixed_bytes,
                                allocatable_params=sum(c.n_params for c in mix.choices.values()))
    types = mix.allocate(budget)
    figures |= {"budget_bytes": budget, "allocation": summary(mix, types)}
    return mixed_policy(policy, types), figures, mix


def baselines(cfg: Config, policy, pipe, mix) -> dict:
    """The allocation vs uniform Q4_K / Q3_K and the rule mixes at matched bytes, on prompts and a
    seed the sensitivities did not see (quant/mix/baselines.py)."""
    from squeezegen.quant.mix.baselines import compare_on_heldout, heldout_prompt_indices
    from squeezegen.sd.generate import sample_prompts

    qcfg = cfg.quantize
    prompts = sample_prompts(2 * qcfg.calib_prompts, cfg.sd.prompt_template)
    return compare_on_heldout(pipe, mix, policy, [prompts[i] for i in heldout_prompt_indices(qcfg.calib_prompts)],
                              steps=qcfg.calib_steps, size=cfg.data.sd_size, seed=cfg.seed + 1,
                              guidance_scale=qcfg.calib_guidance)


def bits_report(manifest: dict, min_elements: int) -> None:
    """reports/quantize/bits_per_layer.png: bits per weight of each tensor of the written file."""
    from squeezegen.files import atomic_path
    from squeezegen.quant.mix.assign import bits_picture

    rows = [(n, 8 * t["bytes"] / t["n_params"]) for n, t in manifest["tensors"].items() if t["n_params"] > min_elements]
    totals = manifest["totals"]
    with atomic_path(REPORT_DIR) as tmp:
        tmp.mkdir(parents=True)
        bits_picture({f"unet.gguf: {totals['bpw']:.3f} bits/weight, {totals['bytes_gguf'] / 1e6:.2f} MB": rows},
                     tmp / "bits_per_layer.png")


def main(params: str = "params.yaml", profile: str | None = None) -> dict:
    from squeezegen.files import sha256_file
    from squeezegen.quant.pipeline import quantize_pipeline

    cfg = load_config(params, profile=profile)
    qcfg = cfg.quantize
    if not BASE_DIR.is_dir():
        raise UserError(f"{BASE_DIR}: base pipeline not found; run `dvc repro fetch_base` first")
    if not LORA_FILE.is_file():
        raise UserError(f"{LORA_FILE}: LoRA weights not found; run `dvc repro finetune_lora` first")
    policy = quant_policy(qcfg)
    budgeted = qcfg.budget_bpw is not None or qcfg.budget_bytes is not None
    with stage_run("quantize", cfg) as run:
        extra: dict = {"importance": qcfg.importance, "mixed": budgeted}
        if qcfg.importance == "activations" or budgeted or qcfg.baselines:
            start = time.perf_counter()
            pipe, calib = calibration(cfg)
            extra |= {"calib_samples": calib.n_samples, "calib_seconds": time.perf_counter() - start}
            if qcfg.importance == "activations":
                policy = dataclasses.replace(policy, importance=calib.importance)
            if budgeted or qcfg.baselines:
                start = time.perf_counter()
                policy, figures, mix = budget_policy(qcfg, policy, pipe, calib, budgeted)
                extra |= figures | {"allocation_seconds": time.perf_counter() - start}
            if qcfg.baselines:
                start = time.perf_counter()
                extra |= {"baselines": baselines(cfg, policy, pipe, mix), "baselines_seconds": time.perf_counter() - start}
            del pipe
        metrics, manifest = quantize_pipeline(
            BASE_DIR,
            QUANT_DIR,
            policy=policy,
            lora_dir=LORA_DIR,
            text_encoder_8bit=qcfg.text_encoder_8bit,
            key_format=qcfg.key_format,
            metadata={
                "base_model": cfg.sd.base,
                "lora_sha256": sha256_file(LORA_FILE),
                "lora_fused": True,
                "squeezegen_version": squeezegen.__version__,
            },
        )
        bits_report(manifest, qcfg.min_elements)
        metrics |= extra
        run.write_metrics("quantize", metrics)
        run.log_artifact(QUANT_DIR / "manifest.json")
    return metrics
