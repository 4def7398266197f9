"""The compressed pipeline: quantized files, each configuration built and run on the CPU, drift."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from squeezegen.errors import UserError
from squeezegen.quant.pipeline import quantize_pipeline
from squeezegen.sd.configurations import build_pipeline, generate_compressed, generate_measured

# each saving on its own, and the phase-resident pipeline with the same recipe as the tiled one
CONFIGS = ("fp16", "q4k_unet", "q4k_unet_int8_clip", "q4k_unet_int8_clip_cpu_vae", "q4k_unet_int8_clip_tiled_vae",
           "lean_cfg_batch", "lean")
SIZE, STEPS = 64, 3  # the toy size: at 32 px the tiny latent (4×4) makes a random UNet chaotic
PROMPT = "an impressionist landscape painting"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread per module


def make_lora(pipe, out_dir, *, seed: int = 0, std: float = 0.05):
    """A LoRA on the attention projections with random (non-zero) B, saved diffusers-style."""
    from peft import LoraConfig

    from squeezegen.sd.lora import save_adapter

    pipe.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return save_adapter(pipe.unet, out_dir)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from squeezegen.quant.mix.policy import QuantPolicy
    from squeezegen.sd.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("compressed")
    pipe = build_tiny_pipeline(seed=0)
    pipe.save_pretrained(root / "base")
    make_lora(pipe, root / "lora")
    metrics, manifest = quantize_pipeline(
        root / "base", root / "quantized", policy=QuantPolicy(), lora_dir=root / "lora",
        metadata={"base_model": "tiny"}, device="cpu", progress=False,
    )
    return {"root": root, "base": root / "base", "lora": root / "lora", "quant": root / "quantized",
            "metrics": metrics, "manifest": manifest}


@pytest.fixture(scope="module")
def runs(files):
    """Each configuration built once; images for seeds 0 and 1 (same prompt)."""
    out = {}
    for name in CONFIGS:
        bundle = build_pipeline(name, base_dir=files["base"], lora_dir=files["lora"], quant_dir=files["quant"], device="cpu",
                                vae_tile_px=32)
        result = generate_measured(bundle, [PROMPT, PROMPT], [0, 1], steps=STEPS, size=SIZE)
        out[name] = {"bundle": bundle, "result": result, "resident": bundle.resident_bytes()}
    return out


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _psnr(a, b) -> float:
    mse = np.mean((_pixels(a) - _pixels(b)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def test_quantized_folder_has_gguf_int8_text_encoder_and_full_manifest(files):
    from squeezegen.quant.gguf.io import read_gguf

    quant = files["quant"]
    assert (quant / "unet.gguf").is_file() and (quant / "text_encoder" / "config.json").is_file()
    manifest = json.loads((quant / "manifest.json").read_text())
    tensors, metadata = read_gguf(quant / "unet.gguf")
    assert set(manifest["tensors"]) == set(tensors)  # every tensor listed
    for name, entry in manifest["tensors"].items():
        assert (entry["type"], tuple(entry["shape"]), entry["bytes"]) == (
            tensors[name].qtype.name, tensors[name].shape, tensors[name].nbytes
        )
    m = files["metrics"]
    assert m["unet_bytes_gguf"] < m["unet_bytes_fp16"] / 2 and 0.5 < m["q4k_fraction"] <= 1.0
    assert 0 < m["rel_rmse_mean"] <= m["rel_rmse_max"] < 0.2
    assert m["text_encoder_bytes_int8"] < m["text_encoder_bytes_fp16"]
    assert metadata["squeezegen.base_model"] == "tiny"


def test_lora_is_fused_into_the_quantized_unet(files):
    from squeezegen.quant.gguf.unet_loader import read_unet_tensors
    from squeezegen.sd.configurations import fused_unet_state_dict

    base = fused_unet_state_dict(files["base"])
    fused = fused_unet_state_dict(files["base"], files["lora"])
    tensors = read_unet_tensors(files["quant"] / "unet.gguf")  # by diffusers name, as `fused`
    names = [n for n in fused if n.endswith("to_q.weight") and tensors[n].quantized]
    assert names
    for name in names:
        stored = torch.from_numpy(tensors[name].dequantize())
        delta = (fused[name] - base[name]).norm()
        assert delta > 0.1 * base[name].norm()  # the LoRA really changes the weight
        assert (stored - fused[name]).norm() < 0.5 * (stored - base[name]).norm()


def test_every_configuration_generates_on_cpu(runs):
    for name, run in runs.items():
        images = run["result"].images
        assert len(images) == 2 and images[0].size == (SIZE, SIZE), name
        assert np.ptp(_pixels(images[0])) > 0, name
        peak = run["result"].peak()
        assert set(peak["phases"]) == {"encode", "denoise", "decode"}
        assert peak["peak_rss"] and peak["peak_bytes"] == peak["peak_rss"] and peak["peak_allocated"] is None
        assert len(run["result"].seconds) == 2 and min(run["result"].seconds) > 0


def test_components_sit_where_each_configuration_says(runs):
    from squeezegen.quant.gguf.layers import GGUFConv2d, GGUFLinear

    fp16, q4k = runs["fp16"]["bundle"].pipe, runs["q4k_unet"]["bundle"].pipe
    assert fp16.unet.dtype == torch.float32  # "fp16" computes in fp32 on a CPU
    assert not any(isinstance(m, (GGUFLinear, GGUFConv2d)) for m in fp16.unet.modules())
    assert any(isinstance(m, GGUFConv2d) for m in q4k.unet.modules())  # convs are quantized too
    assert any(isinstance(m, GGUFLinear) for m in q4k.unet.modules())
    int8_te = runs["q4k_unet_int8_clip"]["bundle"].pipe.text_encoder
    assert any(p.dtype == torch.int8 for p in int8_te.parameters())
    assert not any(p.dtype == torch.int8 for p in q4k.text_encoder.parameters())
    cpu_vae = runs["q4k_unet_int8_clip_cpu_vae"]["bundle"]
    assert cpu_vae.vae_device.type == "cpu" and cpu_vae.pipe.vae.dtype == torch.float32


def test_resident_bytes_shrink_with_each_saving(runs):
    unet = {n: r["resident"]["unet"]["bytes"] for n, r in runs.items()}
    text = {n: r["resident"]["text_encoder"]["bytes"] for n, r in runs.items()}
    n_unet_params = sum(p.numel() for p in runs["fp16"]["bundle"].pipe.unet.parameters())
    assert unet["q4k_unet"] < 2 * n_unet_params / 2.5  # well under the UNet in fp16
    assert unet["q4k_unet"] == unet["q4k_unet_int8_clip"] == unet["q4k_unet_int8_clip_cpu_vae"]
    assert text["q4k_unet_int8_clip"] < text["q4k_unet"] / 2  # int8 (+ fp32 rest on a CPU) vs fp32


def test_quantized_images_stay_close_to_fp16_while_seeds_differ(runs):
    ref = runs["fp16"]["result"].images
    between_seeds = _psnr(ref[0], ref[1])
    for name in ("q4k_unet", "q4k_unet_int8_clip", "q4k_unet_int8_clip_cpu_vae"):  # untiled VAE
        images = runs[name]["result"].images
        for seed in (0, 1):
            drift = _psnr(images[seed], ref[seed])
            assert np.isfinite(drift) and drift > 25.0, (name, seed, drift)
            assert drift > between_seeds + 10.0, (name, drift, between_seeds)
    # The VAE on the CPU in fp32 decodes what the same VAE does in the same dtype: no extra drift.
    assert _psnr(runs["q4k_unet_int8_clip_cpu_vae"]["result"].images[0], runs["q4k_unet_int8_clip"]["result"].images[0]) > 60


def test_generate_compressed_returns_image_and_peaks(files):
    image, peaks = generate_compressed(
        PROMPT, base_dir=files["base"], quant_dir=files["quant"], seed=3, steps=2, size=SIZE, device="cpu"
    )
    assert image.size == (SIZE, SIZE)
    assert peaks["peak_rss"] > 0 and 0 < peaks["weights_bytes"] < peaks["peak_rss"]
    assert peaks["device"] == "cpu"


def test_bad_configuration_or_missing_files_are_user_errors(files, tmp_path):
    with pytest.raises(UserError, match="unknown pipeline configuration"):
        build_pipeline("q2_unet", base_dir=files["base"], device="cpu")
    with pytest.raises(UserError, match="quantize"):
        build_pipeline("q4k_unet", base_dir=files["base"], quant_dir=tmp_path / "nothing", device="cpu")
    with pytest.raises(UserError, match="fetch_base"):
        build_pipeline("fp16", base_dir=tmp_path / "no_base", device="cpu")


def test_phase_residency_computes_the_same_bits_as_the_resident_pipeline(runs):
    """Same weights, same recipe: only where the weights live differs (on a CPU nothing moves, the
    schedule is still recorded). Serial CFG (`lean`) is the same math in two UNet calls."""
    lean_batch, tiled = runs["lean_cfg_batch"], runs["q4k_unet_int8_clip_tiled_vae"]
    for a, b in zip(lean_batch["result"].images, tiled["result"].images):
        assert np.array_equal(_pixels(a), _pixels(b))
    for a, b in zip(runs["lean"]["result"].images, lean_batch["result"].images):
        assert np.abs(_pixels(a) - _pixels(b)).max() <= 2  # float summation order only: ≤ 2/255
    trace = lean_batch["bundle"].residency.trace
    assert trace.schedule() == [("encode", ()), ("denoise", ("unet",)), ("decode", ("vae",))] * 2  # two images
    assert [e["calls"] for e in trace.events] == [2, STEPS, 1] * 2  # encode: cond + uncond prompt
    assert all(e["runs_on"] == ("cpu") for e in trace.events)
    assert runs["lean"]["bundle"].pipe.text_encoder.device.type == "cpu"
    for name in ("lean", "lean_cfg_batch"):  # they ask for a CUDA graph; a CPU has none: eager, said in a note
        bundle = runs[name]["bundle"]
        assert bundle.spec.cuda_graph and bundle.cuda_graph is None and not hasattr(bundle.pipe.unet, "cuda_graph")
        assert any("no CUDA graph" in note for note in bundle.notes)


def test_cpu_dtype_auto_follows_the_cpu(monkeypatch):
    from squeezegen import device

    assert device.cpuinfo_has_bf16("processor : 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n")
    assert device.cpuinfo_has_bf16("flags : fpu amx_bf16 amx_tile\n")
    assert not device.cpuinfo_has_bf16("flags : fpu sse2 avx2 avx512f avx512bw\n")
    for has_bf16, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(device, "cpu_has_bf16", lambda: has_bf16)
        assert device.cpu_compute_dtype("auto") == expected
        assert device.cpu_compute_dtype("fp32") == torch.float32 and device.cpu_compute_dtype("bf16") == torch.bfloat16
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    monkeypatch.setenv("SQUEEZEGEN_STRICT", "1")  # strict mode keeps auto at fp32 even where bf16 is native
    assert device.cpu_compute_dtype("auto") == torch.float32


def test_bf16_on_a_cpu_runs_every_part_in_bf16_close_to_fp32_and_auto_without_bf16_is_fp32(files, runs, monkeypatch):
    from squeezegen import device

    name = "q4k_unet_int8_clip_cpu_vae"
    bf16 = build_pipeline(name, base_dir=files["base"], quant_dir=files["quant"], device="cpu", cpu_dtype="bf16")
    assert bf16.dtype == bf16.vae_dtype == torch.bfloat16 and bf16.pipe.vae.dtype == torch.bfloat16
    images = generate_measured(bf16, [PROMPT, PROMPT], [0, 1], steps=STEPS, size=SIZE).images
    fp32_images = runs[name]["result"].images
    drift = [_psnr(a, b) for a, b in zip(images, fp32_images)]
    assert min(drift) > 20 and any(_pixels(a).tobytes() != _pixels(b).tobytes() for a, b in zip(images, fp32_images))
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    auto = build_pipeline(name, base_dir=files["base"], quant_dir=files["quant"], device="cpu", cpu_dtype="auto")
    assert auto.dtype == torch.float32
    same = generate_measured(auto, [PROMPT, PROMPT], [0, 1], steps=STEPS, size=SIZE).images
    assert all(np.array_equal(_pixels(a), _pixels(b)) for a, b in zip(same, fp32_images))  # fp32: today's bytes
