"""The evaluate stage's report builder on small fake metrics of the upstream stages' real shapes."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from squeezegen import report
from squeezegen.errors import UserError
from squeezegen.files import atomic_write_json
from squeezegen.formatting import fmt_bytes

GIB, MIB = 2**30, 2**20
ROOT = Path(__file__).resolve().parents[1]


def bench_entry(*, peak: int, weights: int, seconds: float, psnr: float | None = None, lpips: float | None = None,
                lpips_name: str = "lpips_randnet", vae_device: str = "cuda:0") -> dict:
    """One configuration of metrics/benchmark.json (keys as sd.benchmark.run_config + summarize write them)."""
    entry = {
        "device_name": "NVIDIA H100", "device": "cuda", "compute_dtype": "float16", "vae_device": vae_device,
        "peak_bytes": peak, "peak_allocated": peak, "peak_reserved": peak + 64 * MIB, "peak_rss": 3 * GIB,
        "baseline_rss": 1 * GIB, "rss_method": "VmHWM", "load_peak_bytes": weights, "load_seconds": 2.0,
        "resident_bytes": {"unet": weights // 2, "text_encoder": weights // 4, "vae": weights // 4, "total": weights},
        "weights_bytes": weights, "phases": {}, "warmup_seconds": seconds * 2, "seconds_per_image": seconds,
        "seconds": [seconds],
    }
    if psnr is not None:
        entry.update({"psnr": psnr, lpips_name: lpips})
    return entry


def fake_metrics(*, levels: int = 4, lpips_name: str = "lpips_randnet") -> dict[str, dict]:
    """All six upstream metrics dicts, with round numbers whose ratios are easy to check by hand."""
    fp16 = bench_entry(peak=4 * GIB, weights=2 * GIB, seconds=2.0)
    fp16.update(psnr_other_seed=11.0, **{f"{lpips_name}_other_seed": 0.6})
    configs = {
        "fp16": fp16,
        "q4k_unet": bench_entry(peak=2 * GIB, weights=GIB, seconds=3.0, psnr=30.0, lpips=0.05, lpips_name=lpips_name),
        "q4k_unet_int8_clip": bench_entry(peak=GIB + GIB // 2, weights=GIB // 2 + GIB // 4, seconds=3.5, psnr=29.0,
                                          lpips=0.06, lpips_name=lpips_name),
        "q4k_unet_int8_clip_cpu_vae": bench_entry(peak=GIB, weights=GIB // 2, seconds=5.0, psnr=28.5, lpips=0.07,
                                                  lpips_name=lpips_name, vae_device="cpu"),
    }
    for m in configs.values():
        for key, ref_key in (("peak_mem_ratio", "peak_bytes"), ("weights_ratio", "weights_bytes"), ("speed_ratio", "seconds_per_image")):
            m[key] = m[ref_key] / fp16[ref_key]
    benchmark = {
        **configs, "device": "NVIDIA H100", "device_type": "cuda", "arch": "pipeline", "peak_metric": "peak_allocated",
        "settings": {"device": "cuda", "compute_dtype": "float16", "seed": 0, "steps": 25, "size": 512, "guidance": 7.5,
                     "repeats": 1},
        "configs": list(configs), "lpips_metric": lpips_name,
    }
    quantize = {
        "unet_bytes_fp16": 1600 * MIB, "unet_bytes_gguf": 500 * MIB, "unet_compression_ratio": 3.2, "unet_bpw": 4.75,
        "q4k_fraction": 0.96, "rel_rmse_mean": 0.043, "rel_rmse_max": 0.081,
        "unet_tensors_by_type": {"F16": {"tensors": 300, "params": 1_000_000, "bytes": 2_000_000},
                                 "Q4_K": {"tensors": 386, "params": 858_000_000, "bytes": 482_625_000}},
        "unet_quantize_seconds": 40.0, "quantize_seconds": 55.0, "text_encoder_8bit": True,
        "text_encoder_bytes_fp16": 240 * MIB, "text_encoder_bytes_int8": 120 * MIB,
    }
    rqvae = {
        "psnr": 21.5, "ssim": 0.61, lpips_name: 0.31,
        "psnr_by_levels": [17.25 + k for k in range(levels)], "ssim_by_levels": [0.4 + 0.05 * k for k in range(levels)],
        "codebook_usage": [0.5 + 0.1 * (k % 4) for k in range(levels)], "perplexity": [100.0 + k for k in range(levels)],
        "grid": [16, 16], "bits_per_image": 16 * 16 * levels * 8, "n_images": 25, "params": 1_234_567,
        "final_loss": 0.12, "train_seconds": 100.0, "steps_per_s": 4.0, "peak_mem_bytes": 512 * MIB,
    }
    refiner = {
        "params": 2_345_678, "psnr_before": 21.5, "psnr_after": 22.75, "ssim_before": 0.61, "ssim_after": 0.66,
        "l1_before": 0.1, "l1_after": 0.09, f"{lpips_name}_before": 0.31, f"{lpips_name}_after": 0.25,
        "psnr_gain_db": 1.25, "l1_reduction": 0.1, "final_loss": 0.2, "train_seconds": 80.0, "steps_per_s": 3.0,
        "peak_mem_bytes": 256 * MIB,
    }
    lora = {"trainable_params": 797_184, "total_params": 859_520_964, "final_loss": 0.1234, "steps": 2000,
            "steps_per_s": 1.5, "peak_mem_bytes": 6 * GIB, "seconds": 1333.0, "resumed_from_step": 0}
    data = {"n_in": 320, "n_kept": 320, "n_skipped": 0, "n_train": 295, "n_val": 25}
    judge = {"style_acc": 0.9, "genre_acc": 0.8, "score_r2": 0.6, "score_mae": 4.0, "params": 100_000}
    prior = {"params": 300_000, "val_nll": 2.5, "val_nll_unconditional": 2.7, "perf": {"train_seconds": 90.0}}
    return {"data": data, "lora": lora, "quantize": quantize, "benchmark": benchmark, "rqvae": rqvae, "refiner": refiner,
            "judge": judge, "prior": prior}


def write_inputs(root: Path, metrics: dict[str, dict], *, skip: tuple[str, ...] = ()) -> None:
    """The metrics files, pictures and model folders evaluate checks for, minus the paths in `skip`."""
    for name, values in metrics.items():
        if f"metrics/{name}.json" not in skip:
            atomic_write_json(root / "metrics" / f"{name}.json", values)
    for path in report.OTHER_INPUTS:
        if path not in skip:
            target = root / path
            if target.suffix:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b"")
            else:
                target.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------- headline


def test_headline_ratios_come_from_the_compressed_config_and_quantize_bytes():
    head = report.headline(fake_metrics(), rq_image_size=256)
    sd, rq = head["sd"], head["rq"]
    assert sd["peak_mem_bytes_compressed"] == GIB and sd["peak_mem_bytes_fp16"] == 4 * GIB
    assert sd["peak_mem_ratio"] == pytest.approx(0.25)
    assert sd["weights_ratio"] == pytest.approx(0.25)
    assert sd["unet_compression"] == pytest.approx(1600 / 500)
    assert sd["text_encoder_compression"] == pytest.approx(2.0)
    assert sd["unet_bpw"] == 4.75 and sd["unet_bytes_gguf"] == 500 * MIB
    assert sd["drift_psnr"] == 28.5 and sd["drift_lpips_randnet"] == 0.07  # cpu_vae config, not q4k_unet
    assert sd["seconds_per_image_compressed"] == 5.0
    assert rq["psnr_unrefined"] == 21.5 and rq["psnr_refined"] == 22.75
    assert rq["refiner_gain_db"] == pytest.approx(1.25)
    assert rq["lpips_randnet_unrefined"] == 0.31 and rq["lpips_randnet_refined"] == 0.25
    assert rq["levels"] == 4 and rq["bits_per_image"] == 16 * 16 * 4 * 8
    assert rq["compression_vs_rgb"] == pytest.approx(24 * 256 * 256 / (16 * 16 * 4 * 8))
    assert rq["codebook_usage_mean"] == pytest.approx((0.5 + 0.6 + 0.7 + 0.8) / 4)


def test_headline_is_valid_strict_json_with_sd_and_rq_at_the_top(tmp_path):
    head = report.headline(fake_metrics(lpips_name="lpips"))
    atomic_write_json(tmp_path / "evaluate.json", head)  # allow_nan=False: no NaN/inf may slip in
    loaded = json.loads((tmp_path / "evaluate.json").read_text())
    assert set(loaded) == {"sd", "rq"}
    assert "drift_lpips" in loaded["sd"] and "lpips_refined" in loaded["rq"]
    assert all(not isinstance(v, (dict, list)) for branch in loaded.values() for v in branch.values())


def test_an_rq_only_change_leaves_every_sd_headline_value_identical():
    before = report.headline(fake_metrics(levels=4))
    changed = fake_metrics(levels=8)
    changed["refiner"]["psnr_after"] = 25.0
    after = report.headline(changed)
    assert after["sd"] == before["sd"]
    assert after["rq"]["levels"] == 8 and after["rq"] != before["rq"]


def test_without_the_cpu_vae_config_the_last_compressed_config_is_compared():
    metrics = fake_metrics()
    bench = metrics["benchmark"]
    del bench["q4k_unet_int8_clip_cpu_vae"]
    bench["configs"] = ["fp16", "q4k_unet", "q4k_unet_int8_clip"]
    sd = report.sd_headline(metrics["quantize"], bench)
    assert sd["peak_mem_ratio"] == pytest.approx(1.5 / 4) and sd["drift_psnr"] == 29.0
    bench["configs"] = ["fp16"]  # only the baseline benchmarked: no comparison, but no crash either
    sd = report.sd_headline(metrics["quantize"], bench)
    assert sd["peak_mem_ratio"] is None and sd["peak_mem_bytes_compressed"] is None


# ---------------------------------------------------------------------------- formatting + report


@pytest.mark.parametrize(
    ("n", "text"),
    [(None, "—"), (512, "512 B"), (1536, "1.5 KiB"), (3 * MIB, "3.0 MiB"), (1600 * MIB, "1.56 GiB"), (2 * GIB, "2.00 GiB")],
)
def test_fmt_bytes_picks_a_readable_unit(n, text):
    assert fmt_bytes(n) == text


def fake_gen() -> dict:
    """evaluate's `gen` metrics (squeezegen.generation.measure.run_generation's keys)."""
    row = lambda **kw: {"style_acc": 0.5, "genre_acc": 0.4, "score_mean": 50.0, "fd_judge": 10.0, **kw}  # noqa: E731
    ci = lambda **kw: {name: {"lo": lo, "hi": hi} for name, (lo, hi) in kw.items()}  # noqa: E731
    return {
        "n": 48, "n_seeds": 2, "judge_on_val": {"style_acc": 0.9, "genre_acc": 0.8, "score_mean": 55.0},
        "real_train": row(fd_judge=2.0, style_acc=0.85),
        "rq_prior": row(params=1_500_000, bytes=6 * MIB, seconds_per_image=0.05, score_high=66.0, score_low=44.5,
                        score_control=21.5, fd_position=0.25, style_acc=0.61, style_acc_vs_real=0.68,
                        ci95=ci(style_acc=(0.5, 0.7), genre_acc=(0.3, 0.5), score_mean=(47.5, 52.5), fd_judge=(8.0, 13.0),
                                score_high=(63.0, 69.0), score_low=(41.0, 48.0), score_control=(15.0, 28.0),
                                fd_position=(0.1, 0.4), style_acc_vs_real=(0.55, 0.78))),
        "rq_prior_norefine": row(params=1_000_000, bytes=4 * MIB, seconds_per_image=0.04),
        "rq_marginal": row(fd_judge=34.0, style_acc=0.1),
        "sd_base": row(params=1_658_244, bytes=6 * MIB, seconds_per_image=0.4, score_high=51.0, score_low=50.0,
                       score_control=1.0),
        "sd": row(params=1_658_244, bytes=7 * MIB, seconds_per_image=0.4, score_high=58.0, score_low=49.5,
                  score_control=8.5, style_acc_vs_real=0.56),
        "sd_compressed": row(params=1_658_244, bytes=3 * MIB, seconds_per_image=0.6),
    }


def test_report_shows_the_numbers_tables_and_pictures():
    from squeezegen.generation.render import generation_markdown

    metrics = fake_metrics()
    generation = generation_markdown(fake_gen(), judge=metrics["judge"], profile="full")
    text = report.build_report(metrics, report.headline(metrics), profile="full", samples_caption="CAPTION-HERE",
                               generation=generation)
    # generation: one row per generator with its judge figures and their 95% intervals, the score control and fd position
    assert ("| **RQ generator** (prior + RQ-VAE + refiner) | 1,500,000 | 6.00 MiB | 0.050 | 0.61 [0.50, 0.70] | 0.40 [0.30, 0.50] "
            "| 50.0 [47.5, 52.5] | 10.00 [8.00, 13.00] |") in text
    assert "| SD + aesthetic LoRA, uncompressed | 1,658,244 | 7.00 MiB | 0.400 | 0.50 | 0.40 | 50.0 | 10.00 |" in text  # bare
    # every generator with a score control gets a row of the standing table, the SD base too
    assert "| SD + aesthetic LoRA, uncompressed | 58.0 | 49.5 | +8.5 | 0.56 | — |" in text
    assert "| SD base, no LoRA | 51.0 | 50.0 | +1.0 | — | — |" in text
    assert "judged 66.0 [63.0, 69.0]" in text and "44.5 [41.0, 48.0]" in text and "+21.5 [+15.0, +28.0] points" in text
    assert "0.25 [0.10, 0.40] of the way" in text and "0.68 [0.55, 0.78] times the judge's" in text
    assert "95% interval" in text and "bootstrap" in text and "48 conditions × 2 seeds" in text
    assert "score R² 0.60" in text and "pretrained here" not in text  # the toy-SD note only on the toy profile
    # headline: compressed vs fp16 peak and the ratio, UNet bytes, the refiner gain in dB
    assert "1.00 GiB vs 4.00 GiB (0.25×)" in text
    assert "500.0 MiB vs 1.56 GiB (3.20× smaller, 4.75 bits/weight)" in text
    assert "21.50 dB → 22.75 dB (+1.25 dB)" in text
    # the memory table has one row per configuration, with its s/image and drift
    memory_rows = [line for line in text.splitlines() if line.startswith("| `")]
    for name in metrics["benchmark"]["configs"]:
        assert any(line.startswith(f"| `{name}` |") for line in memory_rows)
    cpu_vae_row = next(line for line in memory_rows if line.startswith("| `q4k_unet_int8_clip_cpu_vae` |"))
    assert "| cpu |" in cpu_vae_row and "| 28.5 |" in cpu_vae_row and "| 0.070 |" in cpu_vae_row and "| 5.00 |" in cpu_vae_row
    # per-level table: every level's PSNR, cumulative bits, usage and perplexity
    for k in range(1, 5):
        assert f"| {k} | {17.25 + k - 1:.2f} dB |" in text
        assert f"{16 * 16 * 8 * k:,}" in text
    assert "103.0" in text and "80.0%" in text
    assert "797,184 of 859,520,964" in text
    for picture in report.PICTURES:
        assert f"]({picture})" in text
    assert "CAPTION-HERE" in text and "dvc repro" in text and "dvc metrics diff" in text
    assert "toy" not in text.split("## Headline")[0]  # the toy disclaimer only for the toy profile


def test_report_on_cpu_explains_rss_and_uses_the_lpips_key_it_is_given():
    metrics = fake_metrics(lpips_name="lpips")
    metrics["benchmark"]["device_type"] = "cpu"
    for name in metrics["benchmark"]["configs"]:
        metrics["benchmark"][name]["peak_rss_above_baseline"] = metrics["benchmark"][name]["peak_bytes"] // 2
    head = report.headline(metrics)
    assert head["sd"]["rss_above_baseline_ratio"] == pytest.approx(0.25)
    text = report.build_report(metrics, head, profile="toy")
    assert "peak RSS" in text and "RSS above start" in text and "**toy** profile" in text
    assert "lpips vs fp16" in text and "lpips_randnet" not in text


# ---------------------------------------------------------------------------- inputs


def test_check_inputs_names_each_missing_file_and_its_stage(tmp_path):
    write_inputs(tmp_path, fake_metrics(), skip=("metrics/rqvae.json", "reports/benchmark/memory.png"))
    with pytest.raises(UserError) as err:
        report.check_inputs(tmp_path)
    message = str(err.value)
    assert "metrics/rqvae.json (made by train_rqvae)" in message
    assert "reports/benchmark/memory.png (made by benchmark)" in message
    assert "metrics/refiner.json" not in message
    assert "dvc repro train_rqvae benchmark" in message


def test_load_metrics_reads_all_files_and_rejects_broken_ones(tmp_path):
    metrics = fake_metrics()
    write_inputs(tmp_path, metrics)
    report.check_inputs(tmp_path)  # all there: no error
    from squeezegen.metrics_files import merge_perf

    loaded = report.load_metrics(tmp_path)
    assert loaded == json.loads(json.dumps({name: merge_perf(values) for name, values in metrics.items()}))
    assert loaded["prior"]["train_seconds"] == 90.0  # `perf` figures are back in place for the report
    (tmp_path / "metrics" / "quantize.json").write_text("{not json")
    with pytest.raises(UserError, match=r"quantize\.json: not valid JSON.*quantize"):
        report.load_metrics(tmp_path)
    (tmp_path / "metrics" / "lora.json").unlink()
    with pytest.raises(UserError, match=r"lora\.json: not found.*finetune_lora"):
        report.load_metrics(tmp_path)


def test_stage_main_stops_with_a_user_error_before_any_work_when_inputs_are_missing(tmp_path, monkeypatch):
    from squeezegen.stages import evaluate

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    metrics = copy.deepcopy(fake_metrics())
    write_inputs(tmp_path, metrics, skip=("models/quantized",))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SQUEEZEGEN_MLFLOW", "0")
    with pytest.raises(UserError, match=r"models/quantized \(made by quantize\)"):
        evaluate.main()
    assert not (tmp_path / "metrics" / "evaluate.json").exists() and not (tmp_path / "reports" / "report.md").exists()
