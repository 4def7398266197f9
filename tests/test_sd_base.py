"""fetch_base: the tiny offline pipeline (deterministic, SD-shaped, quantization paths present), local folders, hub errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from squeezegen.data.captions import all_captions
from squeezegen.errors import UserError
from squeezegen.files import sha256_file
from squeezegen.sd.hub import fetch_base
from squeezegen.sd.tiny import build_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread per module


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return fetch_base("tiny", tmp_path_factory.mktemp("base") / "base", seed=0)


@pytest.fixture(scope="module")
def tiny_pipe(tiny_dir) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(str(tiny_dir), local_files_only=True)


def test_same_seed_gives_identical_files_other_seed_other_weights(tiny_dir, tmp_path):
    again = fetch_base("tiny", tmp_path / "again", seed=0)
    hashes = file_hashes(tiny_dir)
    assert any(name.endswith(".safetensors") for name in hashes)
    assert file_hashes(again) == hashes
    other = file_hashes(fetch_base("tiny", tmp_path / "other", seed=1))
    assert other["unet/diffusion_pytorch_model.safetensors"] != hashes["unet/diffusion_pytorch_model.safetensors"]
    assert other["tokenizer/tokenizer.json"] == hashes["tokenizer/tokenizer.json"]  # the tokenizer depends on the corpus only


def test_tiny_pipeline_has_sd_structure(tiny_pipe):
    assert tiny_pipe.safety_checker is None
    assert type(tiny_pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert tiny_pipe.scheduler.config.steps_offset == 1 and tiny_pipe.scheduler.config.prediction_type == "epsilon"
    with torch.no_grad():
        latents = tiny_pipe.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean  # (1, 4, 8, 8)
    assert latents.shape == (1, 4, 8, 8)  # 8× downsampling, 4 latent channels, like SD
    assert tiny_pipe.unet.config.cross_attention_dim == tiny_pipe.text_encoder.config.hidden_size


def test_tiny_unet_exercises_every_quantization_path(tiny_pipe):
    state = tiny_pipe.unet.state_dict()
    linear_256 = [k for k, v in state.items() if v.ndim == 2 and v.shape[1] % 256 == 0]
    reshaped_convs = [
        k for k, v in state.items() if v.ndim == 4 and v.shape[-1] == 3 and v.numel() % 256 == 0 and v[0].numel() % 256
    ]
    assert any(".to_k." in k for k in linear_256) and any(".ff.net.2." in k for k in linear_256)
    assert len(reshaped_convs) >= 5
    assert any(k.startswith("time_embedding.") for k in state)
    assert any("norm" in k for k in state) and "conv_in.weight" in state and "conv_out.weight" in state


def test_tokenizer_is_deterministic_and_covers_any_text(tiny_pipe):
    tok = tiny_pipe.tokenizer
    assert build_tokenizer().get_vocab() == tok.get_vocab()
    assert tok.model_max_length == 77
    for caption in all_captions():
        ids = tok(caption).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.eos_token_id not in ids[1:-1]  # no unknown pieces (unk is <|endoftext|>)
        assert len(ids) <= 10  # learned merges: whole words, not characters
    text = "Zebra №42, ÿ — über"
    ids = tok(text).input_ids
    assert tok.eos_token_id not in ids[1:-1]  # byte-level: every byte has a token
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == text.lower().replace(" ", "")  # lossless up to CLIP's spacing


def test_local_folder_is_validated_and_copied(tiny_dir, tmp_path):
    copy = fetch_base(str(tiny_dir), tmp_path / "copy", seed=123)
    pipe = StableDiffusionPipeline.from_pretrained(str(copy), local_files_only=True)
    assert torch.equal(pipe.unet.conv_in.weight, StableDiffusionPipeline.from_pretrained(str(tiny_dir)).unet.conv_in.weight)
    (tmp_path / "not_a_pipeline").mkdir()
    with pytest.raises(UserError, match="model_index.json"):
        fetch_base(str(tmp_path / "not_a_pipeline"), tmp_path / "out", seed=0)
    with pytest.raises(UserError, match="neither `tiny`"):
        fetch_base("./no/such/folder", tmp_path / "out", seed=0)
    assert not (tmp_path / "out").exists()


def test_hub_offline_unknown_model_says_what_to_do(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(UserError) as err:
        fetch_base("squeezegen-tests/no-such-model", tmp_path / "out", seed=0)
    message = str(err.value)
    assert "squeezegen-tests/no-such-model" in message and "HF_HUB_OFFLINE" in message
    assert "hf auth login" in message and "sd.base" in message
    assert not (tmp_path / "out").exists()


def test_local_fp16_folder_stays_fp16(tiny_pipe, tmp_path):
    from safetensors import safe_open

    from squeezegen.sd.hub import weights_dtype

    source = tmp_path / "fp16"
    tiny_pipe.to(dtype=torch.float16).save_pretrained(source)
    tiny_pipe.to(dtype=torch.float32)  # the module-scoped fixture stays as it was
    out = fetch_base(str(source), tmp_path / "models" / "base", seed=0)
    assert weights_dtype(out) == torch.float16
    for part in ("unet", "vae", "text_encoder"):
        (weights,) = (out / part).glob("*.safetensors")
        with safe_open(str(weights), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}, part
        assert weights.stat().st_size <= 1.01 * next((source / part).glob("*.safetensors")).stat().st_size


def test_fetch_base_says_when_the_disk_is_too_small(tiny_dir, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(UserError, match="needs ~.* GB of disk"):
        fetch_base(str(tiny_dir), tmp_path / "models" / "base", seed=0)
    assert not (tmp_path / "models" / "base").exists()
