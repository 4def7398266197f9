"""The quantize + benchmark stages on a tiny pipeline, and the SD 1.5-architecture configs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from squeezegen.quant.codecs import q4k_native
from squeezegen.sd.configurations import CONFIGS, SPECS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory):
    """A project folder with params.yaml (toy, 3 steps), models/base (tiny) and models/lora."""
    from test_compressed import make_lora

    from squeezegen.sd.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("stages")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profiles"]["toy"]["sd"]["infer_steps"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    pipe = build_tiny_pipeline(seed=0)
    pipe.save_pretrained(root / "models" / "base")
    make_lora(pipe, root / "models" / "lora")
    return root


@pytest.fixture(scope="module")
def stage_outputs(stage_dir):
    """Run quantize then benchmark in `stage_dir` (configurations in child processes on a CPU)."""
    from squeezegen.stages import benchmark, quantize

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(stage_dir)
        mp.setenv("SQUEEZEGEN_MLFLOW", "0")
        mp.setenv("OMP_NUM_THREADS", "1")  # the children's torch: 1 thread on this shared CPU
        quantize_metrics = quantize.main()
        benchmark_metrics = benchmark.main()
    return quantize_metrics, benchmark_metrics


def test_quantize_stage_writes_folder_metrics_and_metadata(stage_dir, stage_outputs):
    from squeezegen.files import sha256_file
    from squeezegen.quant.gguf.io import read_gguf

    returned, _ = stage_outputs
    quant = stage_dir / "models" / "quantized"
    assert {p.name for p in quant.iterdir()} == {"unet.gguf", "text_encoder", "manifest.json"}
    from squeezegen.metrics_files import merge_perf

    on_disk = json.loads((stage_dir / "metrics" / "quantize.json").read_text())
    calibrated = {"calib_seconds"} if returned["importance"] == "activations" else set()  # quantize.importance
    assert set(on_disk["perf"]) == {"quantize_seconds", "unet_quantize_seconds"} | calibrated  # timings apart from the rest
    written = merge_perf(on_disk)
    assert written == json.loads(json.dumps(returned))
    for key in ("unet_bytes_fp16", "unet_bytes_gguf", "unet_bpw", "q4k_fraction", "rel_rmse_mean", "rel_rmse_max",
                "quantize_seconds", "text_encoder_bytes_fp16", "text_encoder_bytes_int8"):
        assert isinstance(written[key], (int, float)), key
    assert 4.5 <= written["unet_bpw"] < 8  # Q4_K is 4.5; kept F16 tensors add a little
    _, metadata = read_gguf(quant / "unet.gguf")
    assert metadata["squeezegen.base_model"] == "tiny"
    assert metadata["squeezegen.lora_sha256"] == sha256_file(stage_dir / "models/lora/pytorch_lora_weights.safetensors")
    assert json.loads(metadata["squeezegen.policy"])["unet_type"] == "Q4_K"
    assert not list(quant.parent.glob(".quantized*"))  # no temporary left behind


def test_benchmark_stage_measures_every_configuration(stage_dir, stage_outputs):
    _, returned = stage_outputs
    from squeezegen.metrics_files import merge_perf

    on_disk = json.loads((stage_dir / "metrics" / "benchmark.json").read_text())
    perf = on_disk["perf"][CONFIGS[0]]  # a CPU run: seconds and RSS-based peaks apart, exact bytes kept
    assert {"seconds_per_image", "peak_bytes", "peak_rss"} <= set(perf) and "weights_bytes" not in perf
    assert on_disk[CONFIGS[0]]["weights_bytes"] > 0 and "peak_bytes" not in on_disk[CONFIGS[0]]
    written = merge_perf(on_disk)
    assert written == json.loads(json.dumps(returned))
    assert written["configs"] == list(CONFIGS) and written["arch"] == "pipeline"
    assert written["device"].startswith("cpu") and written["peak_metric"] == "peak_rss"
    assert written["q4k_decoder"] == ("native" if q4k_native.available() else "torch")  # CPU tensors: the C kernel
    # diffusers' offloading on a CPU: it runs, or it is recorded as skipped with the error that stopped it
    for name, reason in written["skipped"].items():
        assert SPECS[name].placement.endswith("offload") and "CPU" in reason and written[name]["skipped"] == reason
    ran = [n for n in CONFIGS if n not in written["skipped"]]
    assert {"fp16", "lean", "lean_cfg_batch", "lean_tiny_vae", "fp16_model_offload"} <= set(ran)
    for name in ran:
        m = written[name]
        assert m["device_name"] == written["device"]
        assert m["peak_bytes"] == m["peak_rss"] > m["weights_bytes"] > 0
        assert m["device_weights_bytes"] == m["weights_bytes"]  # on a CPU every weight is on the device
        assert m["seconds_per_image"] > 0 and len(m["seconds"]) == 1
        assert m["rss_method"]
    assert written["fp16"]["peak_mem_ratio"] == 1.0
    for name in ("q4k_unet", "q4k_unet_int8_clip", "q4k_unet_int8_clip_cpu_vae"):
        m = written[name]
        assert m["weights_ratio"] < 0.7
        assert m["psnr"] > 25 and 0 <= m["lpips_randnet"] < 0.1
    # residency changes where weights live, not what is computed: same pixels as the same recipe resident
    assert written["lean_cfg_batch"]["psnr"] == written["q4k_unet_int8_clip_tiled_vae"]["psnr"]
    assert written["fp16_model_offload"]["psnr"] == 100.0  # capped: identical to fp16
    lean = written["lean"]
    assert (lean["placement"], lean["cfg"], lean["text_encoder_on"], lean["vae_tile_px"]) == ("phase", "serial", "cpu", 32)
    phases = [(e["phase"], e["on_device"]) for e in lean["residency_trace"]]
    assert phases == [("encode", []), ("denoise", ["unet"]), ("decode", ["vae"])]  # one timed image
    assert lean["residency_trace"][1]["calls"] == 3  # the pipeline's UNet calls: one per step (serial CFG splits inside)
    assert set(lean["attention_processors"]["unet"]) == {"AttnProcessor2_0"}  # torch's scaled_dot_product_attention
    assert sum(lean["sdpa_kernels"].values()) > 0
    assert written["fp16"]["psnr_other_seed"] < 20  # the scale: other seeds differ far more
    # each configuration starts from the same clean child process, not from its predecessor's heap
    baselines = [written[n]["baseline_rss"] for n in ran]
    assert max(baselines) - min(baselines) < 150 * 2**20, baselines


def test_benchmark_stage_writes_chart_table_samples_and_csv(stage_dir, stage_outputs):
    report = stage_dir / "reports" / "benchmark"
    chart, samples = Image.open(report / "memory.png"), Image.open(report / "samples.png")
    frontier = Image.open(report / "frontier.png")
    written = json.loads((stage_dir / "metrics" / "benchmark.json").read_text())
    ran = [n for n in CONFIGS if n not in written["skipped"]]
    assert chart.size[0] > 300 and frontier.size[0] > 600 and samples.size[0] > 0.8 * len(ran) * samples.size[1]  # one image per run
    table = (report / "table.md").read_text()
    assert all(f"`{name}`" in table for name in CONFIGS) and "lpips_randnet" in table
    assert all(f"skipped: {reason}" in table for reason in written["skipped"].values())
    rows = list(csv.DictReader((stage_dir / "metrics" / "benchmark_memory.csv").open()))
    assert [r["config"] for r in rows] == ran
    assert all(int(r["peak_bytes"]) > 0 for r in rows)


def test_benchmark_stage_says_which_stage_to_run(stage_dir, tmp_path, monkeypatch):
    from squeezegen.errors import UserError
    from squeezegen.stages import benchmark

    shutil.copy(stage_dir / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SQUEEZEGEN_MLFLOW", "0")
    with pytest.raises(UserError, match="fetch_base"):
        benchmark.main()


def test_sd15_configs_are_sd15_sized():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from squeezegen.sd import sd15

    with torch.device("meta"):  # shapes only: no 1 B parameters allocated
        unet = UNet2DConditionModel(**sd15.SD15_UNET_CONFIG)
        vae = AutoencoderKL(**sd15.SD15_VAE_CONFIG)
        text = CLIPTextModel(CLIPTextConfig(**sd15.SD15_TEXT_CONFIG))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(unet) == sd15.SD15_UNET_PARAMS == 859_520_964
    assert count(text) == 123_060_480 and count(vae) == 83_653_863
    tokenizer = sd15.character_clip_tokenizer()
    ids = tokenizer(["a pointillist cityscape painting"], padding="max_length", max_length=77).input_ids[0]
    assert len(ids) == 77 and max(ids) < sd15.SD15_TEXT_CONFIG["vocab_size"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a pointillist cityscape painting"
