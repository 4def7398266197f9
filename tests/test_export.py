"""`squeezegen export`: the sdcpp file (sd.cpp's names, true shapes, its types, LoRA fused) and the comfy copy."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from gguf.constants import GGMLQuantizationType as T
from transformers import CLIPTextConfig, CLIPTextModel
from typer.testing import CliRunner

from squeezegen.cli import app
from squeezegen.quant.gguf.export import export_sdcpp, sdcpp_plan, sdcpp_tensor_shapes
from squeezegen.quant.gguf.io import read_gguf, write_unet_gguf
from squeezegen.quant.mix.policy import QuantPolicy
from squeezegen.sd.sd15 import SD15_TEXT_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# What sd.cpp's get_sd_version (model.cpp) looks for to call a file SD 1.x, and names its
# classes build (unet.hpp, auto_encoder_kl.hpp, clip.hpp) for SD 1.5.
SDCPP_SD1_NAMES = {
    "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    "model.diffusion_model.middle_block.1.proj_in.weight": (1280, 1280, 1, 1),
    "model.diffusion_model.output_blocks.7.1.transformer_blocks.0.attn1.to_k.weight": (640, 640),
    "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
    "model.diffusion_model.time_embed.0.weight": (1280, 320),
    "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
    "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
    "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
    "first_stage_model.decoder.mid.attn_1.q.weight": (512, 512, 1, 1),
    "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
    "first_stage_model.post_quant_conv.weight": (4, 4, 1, 1),
}


@pytest.fixture(scope="module")
def sd15_states():
    """SD 1.5's three state dicts on the meta device: names and shapes, no weights."""
    with init_empty_weights():
        return {
            "unet": UNet2DConditionModel(**SD15_UNET_CONFIG).state_dict(),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG)).state_dict(),
            "vae": AutoencoderKL(**SD15_VAE_CONFIG).state_dict(),
        }


def test_sd15_names_are_sdcpps_and_diffusers_converts_them_back(sd15_states):
    names = sdcpp_tensor_shapes(sd15_states["unet"], sd15_states["text_encoder"], sd15_states["vae"])
    for name, shape in SDCPP_SD1_NAMES.items():
        assert names[name][2] == shape, name
    assert not any("position_ids" in n for n in names)
    assert all(len(n) < 128 for n in names)  # sd.cpp builds ggml with GGML_MAX_NAME=128
    # diffusers' own LDM converters (an independent table) take every name back to its key
    by_part = {part: {n: sd15_states[part][k] for n, (p, k, _) in names.items() if p == part} for part in sd15_states}
    unet = convert_ldm_unet_checkpoint(by_part["unet"], SD15_UNET_CONFIG)
    vae = convert_ldm_vae_checkpoint(by_part["vae"], SD15_VAE_CONFIG)
    text = convert_ldm_clip_checkpoint(by_part["text_encoder"])
    text = {k.removeprefix("text_model."): v for k, v in text.items()}  # transformers 5 keys have no text_model.
    for part, converted in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        expected = {k for k in sd15_states[part] if "position_ids" not in k}
        assert set(converted) == expected, part
        assert all(tuple(converted[k].shape) == tuple(sd15_states[part][k].shape) for k in expected), part


def test_sd15_types_follow_sdcpp(sd15_states):
    names = sdcpp_tensor_shapes(sd15_states["unet"], sd15_states["text_encoder"], sd15_states["vae"])
    plans = {name: sdcpp_plan(name, shape) for name, (_, _, shape) in names.items()}
    assert all(p.stored_shape == names[n][2] and p.orig_shape is None for n, p in plans.items())  # true shapes
    assert all(p.qtype == T.F16 for p in plans.values() if len(p.shape) != 2)  # convs, norms, biases
    assert plans["model.diffusion_model.time_embed.0.weight"].qtype == T.F16
    assert plans["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"].qtype == T.F16
    attn = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0."
    assert plans[attn + "attn1.to_q.weight"].qtype == T.Q8_0  # in_features 320
    assert plans[attn + "attn2.to_k.weight"].qtype == T.Q4_K  # in_features 768
    assert plans["model.diffusion_model.input_blocks.7.1.transformer_blocks.0.attn1.to_q.weight"].qtype == T.Q4_K
    assert plans["cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc2.weight"].qtype == T.Q4_K
    unet_bytes = sum(p.nbytes for n, p in plans.items() if names[n][0] == "unet")
    assert 1.3e9 < unet_bytes < 1.4e9  # 1.352 GB (F16: 1.719 GB): F16 convs (541 M params) dominate, as sd.cpp runs them


# --- the toy pipeline, written and read back -----------------------------------------------------


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
def toy(tmp_path_factory):
    from squeezegen.sd.configurations import load_fused_pipeline
    from squeezegen.sd.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("export")
    pipe = build_tiny_pipeline(seed=0)
    pipe.save_pretrained(root / "base")
    make_lora(pipe, root / "lora")
    summary = export_sdcpp(root / "toy.gguf", base_dir=root / "base", lora_dir=root / "lora", progress=False)
    base, fused = load_fused_pipeline(root / "base"), load_fused_pipeline(root / "base", root / "lora")
    return root, summary, base, fused


def test_toy_export_has_every_tensor_in_its_true_shape_and_type(toy):
    root, summary, _, fused = toy
    tensors, metadata = read_gguf(root / "toy.gguf")
    names = sdcpp_tensor_shapes(*(getattr(fused, p).state_dict() for p in ("unet", "text_encoder", "vae")))
    assert list(tensors) == list(names)
    for name, t in tensors.items():
        assert t.shape == t.stored_shape == names[name][2], name
        assert t.qtype == sdcpp_plan(name, t.shape).qtype, name
    assert metadata["general.architecture"] == "sd1" and metadata["squeezegen.export_format"] == "sdcpp"
    assert summary["file_bytes"] == (root / "toy.gguf").stat().st_size and summary["lora_fused"]
    assert set(summary["by_type"]) == {"F16", "Q4_K", "Q8_0"}  # the toy's 256-wide CLIP gives Q4_K rows
    # float tensors are the fused weights in fp16, exactly
    conv = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    expected = fused.unet.state_dict()["down_blocks.0.resnets.0.conv1.weight"].half().float()
    assert torch.equal(torch.from_numpy(tensors[conv].dequantize()), expected)


def test_toy_export_has_the_lora_fused_in(toy):
    root, _, base, fused = toy
    tensors, _ = read_gguf(root / "toy.gguf")
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"  # in_features 256: Q4_K
    name = "model.diffusion_model.input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight"  # 1 resnet per block
    assert tensors[name].qtype == T.Q4_K
    stored = torch.from_numpy(tensors[name].dequantize())
    b, f = base.unet.state_dict()[key], fused.unet.state_dict()[key]
    assert (f - b).norm() > 0.1 * b.norm()
    assert (stored - f).norm() < 0.5 * (stored - b).norm()


# --- command line --------------------------------------------------------------------------------


def test_cli_comfy_copies_an_ldm_unet_and_refuses_diffusers_names(tmp_path, toy):
    _, _, _, fused = toy
    runner = CliRunner()
    for key_format in ("ldm", "diffusers"):
        quant = tmp_path / key_format
        quant.mkdir()
        write_unet_gguf(quant / "unet.gguf", fused.unet.state_dict(), policy=QuantPolicy(), key_format=key_format, progress=False)
    result = runner.invoke(app, ["export", "--format", "comfy", "--quantized", str(tmp_path / "ldm"), str(tmp_path / "c.gguf")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c.gguf").read_bytes() == (tmp_path / "ldm" / "unet.gguf").read_bytes()
    assert json.loads(result.stdout)["format"] == "comfy"
    result = runner.invoke(app, ["export", "--format", "comfy", "--quantized", str(tmp_path / "diffusers"), str(tmp_path / "d.gguf")])
    assert result.exit_code == 2 and "quantize.key_format: ldm" in result.output and not (tmp_path / "d.gguf").exists()


@pytest.mark.parametrize(
    "args, message",
    [(["--format", "onnx"], "choose one of sdcpp, comfy"), (["--base", "/nonexistent"], "base pipeline folder not found"),
     (["--format", "comfy", "--quantized", "/nonexistent"], "quantized UNet not found")],
)  # fmt: skip
def test_cli_export_mistakes_are_one_line_errors(tmp_path, args, message):
    result = CliRunner().invoke(app, ["export", *args, str(tmp_path / "x.gguf")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


# --- stable-diffusion.cpp itself (only where stable-diffusion-cpp-python is installed) -------------

needs_sdcpp = pytest.mark.skipif(
    importlib.util.find_spec("stable_diffusion_cpp") is None,
    reason="stable-diffusion-cpp-python is not installed (it builds sd.cpp from source; see benchmarks/sdcpp_export.py)",
)


@pytest.mark.slow
@needs_sdcpp
def test_sdcpp_runs_the_sd15_architecture_export(tmp_path):
    """sd.cpp loads our SD 1.5-architecture export and draws what our pipeline draws from the same noise."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from sdcpp_export import run_sd15

    result = run_sd15(tmp_path, size=64, steps=2, keep_files=False)
    assert result["sdcpp"]["loaded"] and result["compare"]["psnr_sdcpp_vs_ours_fp32_db"] > 30
