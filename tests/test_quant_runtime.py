"""Runtime side: dequantizing layers, the GGUF UNet loader (vs diffusers' own), the 8-bit text encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import GGUFQuantizationConfig, UNet2DConditionModel
from gguf import quants as gguf_quants
from gguf.constants import GGMLQuantizationType as T
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from squeezegen.errors import UserError
from squeezegen.quant.codecs.registry import codec
from squeezegen.quant.gguf.io import encode_array, read_gguf, write_unet_gguf
from squeezegen.quant.gguf.layers import GGUFConv2d, GGUFLinear, module_resident_bytes
from squeezegen.quant.gguf.unet_loader import load_gguf_unet
from squeezegen.quant.int8 import load_text_encoder_int8, quantize_text_encoder_int8, text_encoder_bytes
from squeezegen.quant.mix.policy import QuantPolicy

TINY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=256,
    sample_size=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=8,
    norm_num_groups=32,
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def tiny_unet(tmp_path_factory):
    """(model, its save_pretrained folder, inputs, fp32 output)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET).eval()
    folder = tmp_path_factory.mktemp("tiny") / "unet"
    unet.save_pretrained(folder)
    inputs = (torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.randn(2, 7, 256))
    with torch.no_grad():
        reference = unet(*inputs).sample
    return unet, folder, inputs, reference


def run(unet: nn.Module, inputs) -> torch.Tensor:
    with torch.no_grad():
        return unet(*inputs).sample


# --- layers ------------------------------------------------------------------------------------


def test_q8_0_torch_decode_matches_gguf():
    x = np.random.default_rng(0).normal(size=(6, 96)).astype(np.float32)
    packed = gguf_quants.quantize(x, T.Q8_0)
    expected = gguf_quants.dequantize(packed, T.Q8_0)
    np.testing.assert_array_equal(codec("Q8_0").dequantize_torch(torch.from_numpy(packed), torch.float32).numpy(), expected)


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q8_0])
def test_gguf_linear_equals_linear_with_decoded_weight(qtype):
    torch.manual_seed(0)
    linear = nn.Linear(256, 24)
    packed = encode_array(linear.weight.detach().numpy(), qtype)
    layer = GGUFLinear.from_linear(linear, packed=torch.from_numpy(packed), qtype=qtype)
    decoded = torch.from_numpy(gguf_quants.dequantize(packed, qtype))
    x = torch.randn(3, 5, 256)
    torch.testing.assert_close(layer(x), F.linear(x, decoded, linear.bias), rtol=0, atol=1e-5)
    assert (layer.in_features, layer.out_features) == (256, 24)
    assert layer.state_dict()["weight"].dtype == torch.uint8
    assert layer.to(torch.float16).weight.dtype == torch.uint8  # dtype casts leave packed bytes alone


@pytest.mark.parametrize(
    "conv_kwargs",
    [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=1),
     dict(kernel_size=3, padding=2, dilation=2, groups=2), dict(kernel_size=3, padding=1, padding_mode="reflect")],
)
def test_gguf_conv2d_equals_conv_with_decoded_weight(conv_kwargs):
    """A conv stored as Q4_K rows of 256 behaves as nn.Conv2d with the decoded weight."""
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 64, **conv_kwargs)
    rows = conv.weight.detach().numpy().reshape(-1, 256)  # [numel/256, 256]
    packed = encode_array(rows, T.Q4_K)
    layer = GGUFConv2d.from_conv(conv, packed=torch.from_numpy(packed), qtype=T.Q4_K)
    reference = nn.Conv2d(32, 64, **conv_kwargs)
    reference.load_state_dict({
        "weight": torch.from_numpy(gguf_quants.dequantize(packed, T.Q4_K)).reshape(conv.weight.shape),
        "bias": conv.bias,
    })
    x = torch.randn(2, 32, 9, 9)
    torch.testing.assert_close(layer(x), reference(x), rtol=0, atol=1e-5)
    assert module_resident_bytes(layer) == packed.nbytes + conv.bias.numel() * 4


# --- UNet loader -------------------------------------------------------------------------------


def test_loader_runs_what_the_file_encodes(tiny_unet, tmp_path):
    unet, folder, inputs, reference = tiny_unet
    path = tmp_path / "unet.gguf"
    write_unet_gguf(path, unet.state_dict(), policy=QuantPolicy(), progress=False)
    loaded = load_gguf_unet(path, config=folder)
    conv = loaded.down_blocks[0].resnets[0].conv1
    assert isinstance(conv, GGUFConv2d) and conv.weight.dtype == torch.uint8
    assert isinstance(loaded.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k, GGUFLinear)
    assert type(loaded.conv_in) is nn.Conv2d and type(loaded.time_embedding.linear_1) is nn.Linear

    # The same architecture with every weight replaced by gguf's decoding of the file.
    tensors, _ = read_gguf(path)
    decoded = UNet2DConditionModel(**TINY_UNET).eval()
    decoded.load_state_dict({
        name: torch.from_numpy(gguf_quants.dequantize(np.array(t.data), t.qtype).reshape(t.shape))
        for name, t in tensors.items()
    })
    output = run(loaded, inputs)
    torch.testing.assert_close(output, run(decoded, inputs), rtol=1e-4, atol=1e-5)
    assert rel_err(output, reference) < 0.3  # Q4_K-level error on a random tiny UNet
    assert module_resident_bytes(loaded) < 0.3 * module_resident_bytes(unet)


def test_loader_with_f16_file_is_nearly_exact_and_takes_pipeline_folder(tiny_unet, tmp_path):
    unet, folder, inputs, reference = tiny_unet
    path = tmp_path / "f16.gguf"
    write_unet_gguf(path, unet.state_dict(), policy=QuantPolicy(unet_type="F16"), progress=False)
    pipeline_folder = tmp_path / "pipeline"
    unet.save_pretrained(pipeline_folder / "unet")
    loaded = load_gguf_unet(path, config=pipeline_folder, compute_dtype=torch.float32)
    assert not any(isinstance(m, (GGUFLinear, GGUFConv2d)) for m in loaded.modules())
    assert rel_err(run(loaded, inputs), reference) < 5e-3


def test_file_without_reshaped_tensors_loads_in_diffusers_identically(tiny_unet, tmp_path):
    """diffusers' own GGUF path (which swaps only nn.Linear) reads our file and agrees with our loader."""
    unet, folder, inputs, reference = tiny_unet
    path = tmp_path / "compat.gguf"
    report = write_unet_gguf(path, unet.state_dict(), policy=QuantPolicy(reshape_convs=False), progress=False)
    assert {r.qtype for r in report.tensors} == {"F16", "Q8_0", "Q4_K"}
    theirs = UNet2DConditionModel.from_single_file(
        str(path),
        config=str(folder),
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        local_files_only=True,
    )
    ours = load_gguf_unet(path, config=folder)
    out_theirs, out_ours = run(theirs, inputs), run(ours, inputs)
    assert rel_err(out_ours, out_theirs) < 1e-3  # diffusers decodes Q4_K scales in fp16
    assert rel_err(out_ours, reference) < 0.1


def test_loader_lists_every_kind_of_mismatch(tiny_unet, tmp_path):
    unet, _, _, _ = tiny_unet
    path = tmp_path / "unet.gguf"
    state = dict(unet.state_dict())
    state.pop("conv_out.bias")
    state["extra.weight"] = torch.zeros(4, 4)
    write_unet_gguf(path, state, policy=QuantPolicy(unet_type="F16"), progress=False)
    config = {**TINY_UNET, "cross_attention_dim": 128}
    with pytest.raises(UserError) as info:
        load_gguf_unet(path, config=config)
    message = str(info.value)
    assert "1 missing: conv_out.bias" in message
    assert "1 unexpected: extra.weight" in message
    assert "attn2.to_k.weight (file (32, 256), model (32, 128))" in message


def test_loader_refuses_missing_config(tiny_unet, tmp_path):
    with pytest.raises(UserError, match="No UNet config"):
        load_gguf_unet(tmp_path / "unet.gguf", config=tmp_path)


# --- 8-bit text encoder ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_text_encoder():
    torch.manual_seed(0)
    config = CLIPTextConfig(
        hidden_size=64, intermediate_size=256, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
        max_position_embeddings=77, projection_dim=64, bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


def test_int8_text_encoder_close_saved_and_reloaded(tiny_text_encoder, tmp_path):
    ids = torch.randint(3, 1000, (2, 77), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = tiny_text_encoder(ids).last_hidden_state
        quantized = quantize_text_encoder_int8(tiny_text_encoder, tmp_path / "te", device="cpu")
        out = quantized(ids).last_hidden_state.float()
        reloaded = load_text_encoder_int8(tmp_path / "te", device="cpu")
        out_reloaded = reloaded(ids).last_hidden_state.float()
    assert F.cosine_similarity(out.flatten(1), reference.flatten(1)).min() > 0.99
    torch.testing.assert_close(out_reloaded, out, rtol=0, atol=0)
    q_proj = reloaded.encoder.layers[0].self_attn.q_proj
    assert q_proj.weight.dtype == torch.int8
    sizes = text_encoder_bytes(reloaded)
    assert sizes["fp16_bytes"] == text_encoder_bytes(tiny_text_encoder)["fp16_bytes"]
    assert sizes["resident_bytes"] < 0.8 * sizes["fp16_bytes"]


def test_unquantized_text_encoder_is_refused(tiny_text_encoder, tmp_path):
    tiny_text_encoder.save_pretrained(tmp_path / "plain")
    with pytest.raises(UserError, match="unquantized"):
        load_text_encoder_int8(tmp_path / "plain", device="cpu")
