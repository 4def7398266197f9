"""The benchmark scripts run end to end at toy scale (their real-scale figures are GPU runs)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from squeezegen.sd.hub import fetch_base

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_q4k_decode_bench_on_cpu_times_the_torch_decode(tmp_path):
    bench = load_script("q4k_decode_bench")
    out = tmp_path / "decode.json"
    result = bench.main(["--device", "cpu", "--rows", "8", "--cols", "512", "--repeats", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert "triton" not in result  # the kernel is for CUDA tensors
    torch_row = result["torch"]
    assert result["n_weights"] == 8 * 512 and result["dtype"] == "float32"
    assert torch_row["seconds"] > 0
    assert math.isclose(torch_row["mweights_per_s"], 8 * 512 / torch_row["seconds"] / 1e6)
    assert math.isclose(torch_row["sd15_unet_ms"], bench.SD15_UNET_WEIGHTS / (torch_row["mweights_per_s"] * 1e6) * 1e3)


def test_lora_memory_rows_read_like_the_processed_dataset():
    bench = load_script("sd15_lora_memory")
    rows = bench.RandomCaptionedImages(5, 32, seed=0)
    assert len(rows) == 5 and len(rows["caption"]) == 5 and all(isinstance(c, str) and c for c in rows["caption"])
    row = rows[3]
    assert row["image_sd"].size == (32, 32) and row["image_sd"].mode == "RGB" and row["caption"] == rows["caption"][3]


def test_lora_memory_variant_trains_on_a_tiny_base(tmp_path):
    """One variant through the real finetune_lora code on the toy base (CPU: fp32, peak RSS)."""
    bench = load_script("sd15_lora_memory")
    base = fetch_base("tiny", tmp_path / "base", seed=0)
    args = bench.parse_args(["--resolution", "64", "--batch-size", "2", "--steps", "3"])
    r = bench.run_variant("ckpt", str(base), args)
    assert r["device"] == "cpu" and r["mixed_precision"] == "no"  # a CPU trains in fp32
    assert r["gradient_checkpointing"] is True and r["use_8bit_adam"] is False
    assert r["peak_mem_bytes"] > 0 and r["steps_per_s"] > 0
    assert 0 < r["trainable_params"] < r["unet_params"]
    assert r["final_loss"] is not None and math.isfinite(r["final_loss"])


def test_lora_memory_rejects_unknown_variants():
    bench = load_script("sd15_lora_memory")
    with pytest.raises(SystemExit):
        bench.parse_args(["--variants", "fastest"])


def test_sd15_memory_runs_every_configuration_by_default_and_checks_the_lean_targets():
    from squeezegen.sd.configurations import CONFIGS

    bench = load_script("sd15_memory")
    args = bench.parse_args([])
    assert args.configs == list(CONFIGS) and args.vae_tile_px == 256 and args.lean_text_encoder == "cpu"
    with pytest.raises(SystemExit):
        bench.parse_args(["--vae-tile-px", "100"])
    summary = {
        "fp16": {"peak_bytes": 2.8e9, "seconds_per_image": 0.65},
        "q4k_unet": {"peak_bytes": 1.6e9, "seconds_per_image": 0.70},
        "fp16_cuda_graph": {"peak_bytes": 2.8e9, "seconds_per_image": 0.50},
        "q4k_unet_cuda_graph": {"peak_bytes": 1.6e9, "seconds_per_image": 0.60},
        "lean": {"peak_bytes": 5.5e8, "seconds_per_image": 1.2},
        "fp16_sequential_offload": {"peak_bytes": 8.0e8, "seconds_per_image": 6.0},
    }
    t = bench.lean_targets(summary, applies=True)
    assert t["lean"]["peak_at_most_0_60_GB"] and t["lean"]["at_most_1_5_s"]
    assert t["lean_vs_sequential_offload"] == {"peak_below": True, "speedup": 5.0, "speedup_at_least_3x": True}
    assert math.isclose(t["q4k_unet_speed"]["ratio"], 0.70 / 0.65) and t["q4k_unet_speed"]["at_most_1_15x"]
    assert math.isclose(t["q4k_unet_cuda_graph_vs_fp16_speed"]["ratio"], 0.60 / 0.65)
    graphs = t["q4k_unet_cuda_graph_vs_fp16_cuda_graph_speed"]
    assert math.isclose(graphs["ratio"], 0.60 / 0.50) and not graphs["at_most_1_15x"]
    summary["fp16_sequential_offload"] = {"skipped": "no accelerator"}
    assert "lean_vs_sequential_offload" not in bench.lean_targets(summary, applies=False)


def test_prior_speed_times_both_priors_at_each_batch_and_writes_the_ratio(tmp_path):
    """benchmarks/prior_speed.py on a params.yaml shrunk to a tiny prior and RQ-VAE: every (batch, prior) row is timed."""
    import yaml

    params = yaml.safe_load((BENCHMARKS.parent / "params.yaml").read_text())
    params["profiles"]["toy"]["data"]["rq_size"] = 16
    params["profiles"]["toy"]["prior"].update(width=16, heads=2, spatial_layers=1, depth_width=8, depth_layers=1)
    params["profiles"]["toy"]["refiner"]["channels"] = [8, 8]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / "speed.json"
    result = load_script("prior_speed").main(["--batch", "1", "3", "--repeats", "1", "--root", str(tmp_path), "--out", str(out)])
    rows = result["perf"]["rows"]
    assert [(r["batch"], r["prior"]) for r in rows] == [(b, k) for b in (1, 3) for k in ("rq_transformer", "next_scale")]
    assert {r["passes"] for r in rows if r["prior"] == "next_scale"} == {params["rqvae"]["levels"]}
    assert all(r["codes_per_s"] > 0 and r["images_per_s_end_to_end"] > 0 for r in rows)
    assert set(result["perf"]["next_scale_over_rq_transformer"]) == {"1", "3"}
    assert out.with_suffix(".md").read_text().count("next_scale / rq_transformer") == 2


def test_kquant_decode_cpu_times_every_type_against_its_matmul(tmp_path):
    bench = load_script("kquant_decode_cpu")
    out = tmp_path / "decode.json"
    result = bench.main(["--rows", "4", "--cols", "512", "--tokens", "8", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert set(result["types"]) == {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"}
    for figures in result["types"].values():
        for dtype in ("float32", "bfloat16"):
            assert 0 < figures[dtype]["decode_share"] < 1 and figures[dtype]["mweights_per_s"] > 0
    assert "| Q4_K |" in out.with_suffix(".md").read_text()


def test_unet_forward_cpu_splits_the_q4k_forward_into_decode_and_the_rest(tmp_path):
    bench = load_script("unet_forward_cpu")
    out = tmp_path / "forward.json"
    result = bench.main(["--arch", "tiny", "--size", "32", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    for dtype in ("float32", "bfloat16"):
        r = result[dtype]
        assert 0 < r["q4k_decode_s"] < r["q4k_s"] and r["q4k_rest_s"] == pytest.approx(r["q4k_s"] - r["q4k_decode_s"])
    assert result["q4k_fraction"] > 0.5
    assert set(result["profile_bf16"]) == {"uncompressed", "q4k"}
    assert result["profile_bf16"]["q4k"]["decode"] > 0 and result["profile_bf16"]["uncompressed"]["decode"] == 0
    assert result["profile_bf16"]["q4k"]["convolution"] > 0 and result["profile_bf16"]["q4k"]["matmul"] > 0


def _sdcpp_result(*, sdcpp_loaded: bool) -> dict:
    """A finished sd15 run's figures, shaped as `run_sd15` writes them (numbers made up for the table)."""
    bench = load_script("sdcpp_export")
    perf = {f"ours_{label}": {"generate_seconds": s, "peak_rss": rss, "compute_dtype": dtype,
                              "seconds": {"text_encoder": 0.1, "sampling": s - 1.1, "vae_decode": 1.0}}
            for (label, (_, dtype)), s, rss in zip(bench.OURS.items(), (40.0, 15.0, 50.0, 18.0), (7e9, 4e9, 3e9, 2e9))}
    if sdcpp_loaded:
        perf["sdcpp"] = {"generate_seconds": 30.0, "peak_rss": 2.2e9}
    return {"settings": {"size": 256, "steps": 4, "threads": 2}, "perf": perf,
            "sdcpp": {"loaded": True} if sdcpp_loaded else {"loaded": False, "error": bench.INSTALL_HINT},
            "compare": {"psnr_ours_bf16_vs_ours_fp32_db": 36.0, "psnr_ours_compressed_vs_ours_fp32_db": 29.0}}


def test_sdcpp_export_targets_compare_the_runs_of_one_result():
    bench = load_script("sdcpp_export")
    result = _sdcpp_result(sdcpp_loaded=True)
    t = bench.targets(result)
    assert t["compressed_vs_fp32_time"] == {"value": 18.0 / 40.0, "met": True}
    assert t["compressed_vs_sdcpp_time"] == {"value": 18.0 / 30.0, "met": True}
    assert t["compressed_vs_sdcpp_peak_rss"]["met"] and t["bf16_psnr_db"]["met"]
    assert t["compressed_psnr_db"] == {"value": 29.0, "met": False}
    result["targets"] = t
    table = bench.markdown(result)
    assert "| stable-diffusion.cpp on our export | its own" in table and "| compressed_psnr_db | 29.00 | False |" in table


def test_sdcpp_export_without_the_binding_says_how_to_install_it(monkeypatch):
    bench = load_script("sdcpp_export")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert bench.sdcpp_missing() == bench.INSTALL_HINT and "pip install" in bench.INSTALL_HINT
    result = _sdcpp_result(sdcpp_loaded=False)
    result["targets"] = bench.targets(result)
    assert result["targets"]["compressed_vs_sdcpp_time"] == {"value": None, "met": None}
    row = next(line for line in bench.markdown(result).splitlines() if line.startswith("| stable-diffusion.cpp"))
    assert "did not run: stable-diffusion-cpp-python is not installed: pip install" in row


def test_sdcpp_export_compares_the_images_it_has():
    import numpy as np

    bench = load_script("sdcpp_export")
    base = np.full((8, 8, 3), 100.0)
    images = {"fp32": base, "bf16": base + 1, "compressed": base + 4}
    out = bench.compare_images(images)
    assert out["psnr_ours_bf16_vs_ours_fp32_db"] == pytest.approx(20 * np.log10(255))
    assert out["psnr_ours_bf16_vs_ours_fp32_db"] > out["psnr_ours_compressed_vs_ours_fp32_db"]
    assert not any(k.startswith("psnr_sdcpp") for k in out)  # no sd.cpp image, no sd.cpp figure
