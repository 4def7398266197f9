"""Phase residency (on the meta device as a stand-in accelerator), serial CFG, attention reporting,
tiled and tiny VAE decodes — the lean configuration's parts, each on tiny models."""

from __future__ import annotations

import collections

import pytest
import torch
from torch import nn

from squeezegen.errors import UserError
from squeezegen.sd import lean
from squeezegen.sd.residency import enable_phase_residency

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Decoder(nn.Module):
    """A VAE stand-in: the pipeline calls `decode`, not `forward` (diffusers' apply_forward_hook)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, z):
        return self.proj(z)

    def decode(self, z):
        from diffusers.utils.accelerate_utils import apply_forward_hook

        return apply_forward_hook(type(self).forward)(self, z)


class _Pipe:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.text_encoder, self.unet, self.vae = nn.Linear(8, 4), nn.Linear(4, 4), _Decoder()


def _run(pipe, device):
    tokens = torch.randn(2, 8)  # on the CPU, where a tokenizer leaves them
    emb = pipe.text_encoder(tokens.to(device))
    x = torch.randn(2, 4, device=device)
    for _ in range(3):
        x = pipe.unet(x + emb)
    return pipe.vae.decode(x)


def test_residency_trace_shows_one_component_on_the_device_per_phase():
    pipe = _Pipe()
    weights = {name: getattr(pipe, name).weight.data.clone() for name in ("text_encoder", "unet")}
    residency = enable_phase_residency(pipe, "meta")  # meta: a device that is not the CPU, on any machine
    out = _run(pipe, "meta")
    assert out.device.type == "meta"
    events = residency.trace.events
    assert residency.trace.schedule() == [("encode", ("text_encoder",)), ("denoise", ("unet",)), ("decode", ("vae",))]
    assert [e["calls"] for e in events] == [1, 3, 1]
    for event in events:  # the weights really are where the schedule says
        assert event["placement"] == {n: ("meta" if n == event["component"] else "cpu") for n in event["placement"]}
        assert event["moved_bytes"] == sum(t.numel() * 4 for t in getattr(pipe, event["component"]).parameters())
    residency.offload_all()  # leaving the device restores the one CPU copy: nothing was copied back
    for name, before in weights.items():
        assert torch.equal(getattr(pipe, name).weight, before) and getattr(pipe, name).weight.device.type == "cpu"


def test_a_cpu_run_component_gets_cpu_inputs_and_hands_back_device_outputs():
    pipe = _Pipe()
    residency = enable_phase_residency(pipe, "meta", run_on_cpu=["text_encoder"])
    emb = pipe.text_encoder(torch.randn(2, 8))  # (meta tensors hold no data to copy to the CPU; a GPU's do)
    assert emb.device.type == "meta" and pipe.text_encoder.weight.device.type == "cpu"
    assert residency.trace.events[0]["on_device"] == [] and residency.trace.events[0]["runs_on"] == "cpu"
    assert pipe.text_encoder._hf_hook.execution_device == torch.device("meta")


def test_residency_on_the_cpu_changes_no_bit():
    reference = _run(_Pipe(), "cpu")
    pipe = _Pipe()
    residency = enable_phase_residency(pipe, "cpu")
    assert torch.equal(_run(pipe, "cpu"), reference)
    assert [e["phase"] for e in residency.trace.events] == ["encode", "denoise", "decode"]


def test_residency_rejects_unknown_components():
    with pytest.raises(ValueError, match="no module components"):
        enable_phase_residency(_Pipe(), "cpu", components=("unet", "safety_checker"))
    with pytest.raises(ValueError, match="run_on_cpu"):
        enable_phase_residency(_Pipe(), "cpu", components=("unet",), run_on_cpu=("vae",))


@pytest.fixture(scope="module")
def tiny():
    from squeezegen.sd.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


def test_serial_cfg_is_two_calls_of_one_with_the_batched_result(tiny):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config(tiny.unet.config).eval()
    unet.load_state_dict(tiny.unet.state_dict())
    gen = torch.Generator().manual_seed(0)
    sample, text = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 77, 256, generator=gen)  # [uncond, cond]
    with torch.no_grad():
        batched = unet(sample, 10, encoder_hidden_states=text, return_dict=False)[0]  # (2, 4, 8, 8)
        sizes = []
        unet.conv_in.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
        lean.enable_serial_cfg(unet)
        serial = unet(sample, torch.tensor([10, 10]), encoder_hidden_states=text).sample
    assert sizes == [1, 1] and serial.shape == batched.shape
    torch.testing.assert_close(serial, batched, rtol=1e-4, atol=1e-5)


def test_attention_path_is_reported(tiny):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny.components)
    lean.set_attention(pipe, "sdpa")
    sample, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 256)
    with torch.no_grad(), lean.record_sdpa_backends() as calls:
        pipe.unet(sample, 10, encoder_hidden_states=text)
    assert lean.attention_processors(pipe)["unet"] == {"AttnProcessor2_0": sum(calls.values())}  # one call per layer
    assert set(calls) <= {"FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"}
    lean.set_attention(pipe, "sliced")
    with torch.no_grad(), lean.record_sdpa_backends() as calls:
        pipe.unet(sample, 10, encoder_hidden_states=text)
    assert not calls and set(lean.attention_processors(pipe)["unet"]) == {"SlicedAttnProcessor"}
    with pytest.raises(UserError, match="sdpa, sliced"):
        lean.set_attention(pipe, "flash")


def test_tiled_decode_tiles_with_the_given_size(tiny):
    """diffusers' tiling with our tile size: 9 overlapping 32 px tiles at 64 px, same image size; a tile
    that covers the image decodes bit for bit as without tiling."""
    vae = tiny.vae
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) / vae.config.scaling_factor
    calls = collections.Counter()
    handle = vae.decoder.register_forward_hook(lambda m, args, out: calls.update([tuple(args[0].shape[-2:])]))
    with torch.no_grad():
        plain = vae.decode(z).sample  # (1, 3, 64, 64)
        lean.enable_tiled_decode(vae, 64)
        assert torch.equal(vae.decode(z).sample, plain)
        calls.clear()
        lean.enable_tiled_decode(vae, 32)
        tiled = vae.decode(z).sample
    handle.remove()
    vae.disable_tiling()
    assert tiled.shape == plain.shape and sum(calls.values()) == 9  # tiles at latent 0, 3, 6 per axis
    assert calls[(4, 4)] == 4  # four full 4×4-latent tiles, the rest clipped at the border
    # Random weights are not tile-invariant (GroupNorm statistics and the mid-block attention see one
    # tile): the tiled decode differs, but stays an image of the same content scale.
    assert 0 < (tiled - plain).abs().mean() < plain.abs().mean()
    for bad in (0, 40):
        with pytest.raises(UserError, match="multiple of 32"):
            lean.enable_tiled_decode(vae, bad)


def test_tiny_vae_from_config_decodes_sd_latents_deterministically():
    a, b = lean.build_tiny_vae(seed=1), lean.build_tiny_vae(seed=1)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        image = a.decode(z).sample
    assert image.shape == (1, 3, 64, 64)  # TAESD's 8× upsampling, as SD's VAE
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(UserError, match="tiny_vae"):
        lean.build_tiny_vae("/no/such/folder")
