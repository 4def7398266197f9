"""LDM tensor names: the one table, both ways, on SD 1.5's and the toy's full key sets; files in
either format load identically, in our loader and in diffusers' `from_single_file`."""

from __future__ import annotations

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, GGUFQuantizationConfig, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from squeezegen.errors import UserError
from squeezegen.quant.gguf.io import read_gguf, write_unet_gguf
from squeezegen.quant.gguf.ldm_names import (
    LDM_UNET_PREFIX,
    UNetLayout,
    is_ldm_unet,
    unet_diffusers_to_ldm,
    unet_ldm_to_diffusers,
    vae_diffusers_to_ldm,
    vae_ldm_to_diffusers,
)
from squeezegen.quant.gguf.unet_loader import load_gguf_unet, read_unet_tensors
from squeezegen.quant.mix.policy import QuantPolicy
from squeezegen.sd.sd15 import SD15_UNET_CONFIG, SD15_VAE_CONFIG
from squeezegen.sd.tiny import build_tiny_pipeline

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


@pytest.fixture(scope="module")
def architectures():
    """name → (UNet config, UNet state dict, VAE state dict); SD 1.5's on the meta device (keys and shapes only)."""
    with init_empty_weights():
        sd15 = (UNet2DConditionModel(**SD15_UNET_CONFIG), AutoencoderKL(**SD15_VAE_CONFIG))
    toy = build_tiny_pipeline(seed=0)
    return {
        "sd15": (dict(sd15[0].config), sd15[0].state_dict(), sd15[1].state_dict()),
        "toy": (dict(toy.unet.config), toy.unet.state_dict(), toy.vae.state_dict()),
    }


@pytest.mark.parametrize("arch", ["sd15", "toy"])
def test_unet_names_round_trip_on_the_full_key_set(architectures, arch):
    config, state, _ = architectures[arch]
    to_ldm = unet_diffusers_to_ldm(state)
    assert len(set(to_ldm.values())) == len(state) == len(to_ldm)
    back = unet_ldm_to_diffusers([LDM_UNET_PREFIX + k for k in to_ldm.values()])
    assert {LDM_UNET_PREFIX + to_ldm[k]: k for k in state} == back
    assert unet_ldm_to_diffusers(to_ldm.values()) == {v: k for k, v in to_ldm.items()}  # prefix optional
    assert UNetLayout.from_ldm(to_ldm.values()) == UNetLayout.from_diffusers(state)
    assert is_ldm_unet(back) and not is_ldm_unet(state)
    # diffusers' own LDM converter (written independently) takes our names back to the same keys
    ldm_checkpoint = {LDM_UNET_PREFIX + to_ldm[k]: k for k in state}
    assert {v: k for k, v in convert_ldm_unet_checkpoint(ldm_checkpoint, config).items()} == {
        k: k for k in state
    }


def test_sd15_unet_names_are_the_original_checkpoints():
    """Spot checks against SD 1.5's original (CompVis) checkpoint names."""
    with init_empty_weights():
        state = UNet2DConditionModel(**SD15_UNET_CONFIG).state_dict()
    to_ldm = unet_diffusers_to_ldm(state)
    assert set(to_ldm.values()) >= {
        "time_embed.0.weight", "time_embed.2.bias", "input_blocks.0.0.weight", "input_blocks.3.0.op.weight",
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", "input_blocks.4.0.skip_connection.weight",
        "middle_block.1.proj_in.weight", "middle_block.2.emb_layers.1.weight", "output_blocks.2.1.conv.weight",
        "output_blocks.5.2.conv.weight", "output_blocks.11.1.transformer_blocks.0.ff.net.2.weight",
        "output_blocks.0.0.out_layers.3.weight", "out.0.weight", "out.2.bias",
    }  # fmt: skip
    assert all(len(LDM_UNET_PREFIX + name) < 128 for name in to_ldm.values())  # sd.cpp's GGML_MAX_NAME


@pytest.mark.parametrize("arch", ["sd15", "toy"])
def test_vae_names_round_trip(architectures, arch):
    _, _, state = architectures[arch]
    to_ldm = vae_diffusers_to_ldm(state)
    assert vae_ldm_to_diffusers(to_ldm.values()) == {v: k for k, v in to_ldm.items()}
    n = len({k.split(".")[2] for k in state if k.startswith("decoder.up_blocks.")})
    assert to_ldm["decoder.up_blocks.0.resnets.0.conv1.weight"] == f"decoder.up.{n - 1}.block.0.conv1.weight"
    assert to_ldm["encoder.mid_block.attentions.0.to_out.0.weight"] == "encoder.mid.attn_1.proj_out.weight"


def test_names_no_table_covers_are_a_user_error():
    with pytest.raises(UserError, match="no counterpart"):
        unet_diffusers_to_ldm(["down_blocks.0.resnets.0.conv1.weight", "add_embedding.linear_1.weight"])
    with pytest.raises(UserError, match="not LDM UNet names"):
        unet_ldm_to_diffusers(["conv_in.weight"])


# --- files ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_unet(tmp_path_factory):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET).eval()
    folder = tmp_path_factory.mktemp("tiny") / "unet"
    unet.save_pretrained(folder)
    inputs = (torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.randn(2, 7, 256))
    return unet, folder, inputs


def _run(unet, inputs) -> torch.Tensor:
    with torch.no_grad():
        return unet(*inputs).sample


def test_ldm_file_has_ldm_names_and_loads_as_the_diffusers_file(tiny_unet, tmp_path):
    unet, folder, inputs = tiny_unet
    files = {}
    for key_format in ("ldm", "diffusers"):
        files[key_format] = tmp_path / f"{key_format}.gguf"
        write_unet_gguf(files[key_format], unet.state_dict(), policy=QuantPolicy(), key_format=key_format, progress=False)
    tensors, metadata = read_gguf(files["ldm"])
    assert metadata["squeezegen.key_format"] == "ldm" and metadata["general.architecture"] == "sd1"
    assert all(name.startswith(LDM_UNET_PREFIX) for name in tensors)
    assert f"{LDM_UNET_PREFIX}input_blocks.1.0.in_layers.2.weight" in tensors
    # same bytes under the other name: the policy chose by the diffusers name in both files
    ldm, diffusers = read_unet_tensors(files["ldm"]), read_unet_tensors(files["diffusers"])
    assert ldm.keys() == diffusers.keys()
    for name in ldm:
        assert (ldm[name].qtype, ldm[name].shape, ldm[name].data.tobytes()) == (
            diffusers[name].qtype, diffusers[name].shape, diffusers[name].data.tobytes()
        ), name
    out_ldm = _run(load_gguf_unet(files["ldm"], config=folder), inputs)
    torch.testing.assert_close(out_ldm, _run(load_gguf_unet(files["diffusers"], config=folder), inputs), rtol=0, atol=0)


def test_ldm_linear_only_file_loads_in_diffusers_identically(tiny_unet, tmp_path):
    """diffusers' from_single_file converts our LDM names itself and agrees with our loader."""
    unet, folder, inputs = tiny_unet
    path = tmp_path / "compat.gguf"
    report = write_unet_gguf(
        path, unet.state_dict(), policy=QuantPolicy(reshape_convs=False), key_format="ldm", progress=False
    )
    assert {r.qtype for r in report.tensors} == {"F16", "Q8_0", "Q4_K"}
    theirs = UNet2DConditionModel.from_single_file(
        str(path),
        config=str(folder),
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        local_files_only=True,
    )
    ours = load_gguf_unet(path, config=folder)
    out_theirs, out_ours = _run(theirs, inputs), _run(ours, inputs)
    assert (out_ours - out_theirs).norm() / out_theirs.norm() < 1e-3  # diffusers decodes Q4_K scales in fp16
    assert (out_ours - _run(unet, inputs)).norm() / out_ours.norm() < 0.1


def test_policy_check_maps_ldm_names_back(tiny_unet, tmp_path):
    """A stored policy that would keep more tensors unquantized is refused for an LDM file too."""
    unet, _, _ = tiny_unet
    path = tmp_path / "ldm.gguf"
    write_unet_gguf(path, unet.state_dict(), policy=QuantPolicy(), key_format="ldm", progress=False)
    raw = bytearray(path.read_bytes())
    at = raw.index(b'"min_elements": 1024')
    raw[at : at + 20] = b'"min_elements": 9999'
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"model\.diffusion_model\..* is stored as Q.* but the file's policy stores it as F16"):
        read_gguf(bad)
