"""LoRA on the tiny pipeline: adapter-only output that diffusers loads, exact resume, NaN stop, long prompts."""

from __future__ import annotations

import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from squeezegen.data.captions import all_captions
from squeezegen.errors import UserError
from squeezegen.sd.generate import generate_image, load_pipeline, run_pipeline
from squeezegen.sd.hub import fetch_base
from squeezegen.sd.lora import ADAPTER_FILE, CaptionedImages, LoraSettings, train_lora

SIZE = 32  # px: 4×4 latents keep every step cheap
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread per module


@pytest.fixture(scope="module")
def tiny_base_dir(tmp_path_factory) -> Path:
    return fetch_base("tiny", tmp_path_factory.mktemp("lora_base") / "base", seed=0)


@pytest.fixture(scope="module")
def tiny_art_dataset(tmp_path_factory) -> Path:
    """A processed-data-shaped DatasetDict on disk: colour-field 'paintings' with LAPIS-style captions."""
    rng = np.random.default_rng(0)
    captions = all_captions()
    columns = {name: [] for name in ("image_id", "image_sd", "image_rq", "caption", "style", "genre", "score", "n_ratings")}
    for i in range(12):
        pixels = np.clip(rng.normal(rng.uniform(0, 255, 3), 30, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        for name, value in (("image_id", f"img{i:03d}"), ("image_sd", image), ("image_rq", image),
                            ("caption", captions[i * 7]), ("style", "Cubism"), ("genre", "portrait"),
                            ("score", 50.0), ("n_ratings", 20)):
            columns[name].append(value)
    features = datasets.Features({
        "image_id": datasets.Value("string"), "image_sd": datasets.Image(), "image_rq": datasets.Image(),
        "caption": datasets.Value("string"), "style": datasets.Value("string"), "genre": datasets.Value("string"),
        "score": datasets.Value("float64"), "n_ratings": datasets.Value("int32"),
    })
    split = datasets.Dataset.from_dict(columns, features=features)
    path = tmp_path_factory.mktemp("processed") / "processed"
    datasets.DatasetDict({"train": split, "val": split.select(range(2))}).save_to_disk(str(path))
    return path


def lora_settings(**overrides) -> LoraSettings:
    base = dict(rank=4, alpha=4, target_modules=TARGETS, lr=1e-2, max_steps=4, batch_size=4, checkpoint_every=2,
                seed=0, resolution=SIZE, lr_scheduler="constant")
    base.update(overrides)
    return LoraSettings(**base)


@pytest.fixture(scope="module")
def trained(tiny_base_dir, tiny_art_dataset, tmp_path_factory):
    work = tmp_path_factory.mktemp("lora_run")
    result = train_lora(
        base_dir=tiny_base_dir, dataset=datasets.load_from_disk(str(tiny_art_dataset)), settings=lora_settings(),
        out_dir=work / "lora", checkpoint_dir=work / "ckpt", fingerprint="test",
    )
    return result


def image_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_only_the_adapter_is_saved(trained):
    folder = trained.adapter_path.parent
    assert sorted(p.name for p in folder.iterdir()) == [ADAPTER_FILE]
    tensors = load_file(trained.adapter_path)
    pattern = re.compile(r"^unet\..+\.(to_q|to_k|to_v|to_out\.0)\.lora\.(down|up)\.weight$")
    assert tensors and all(pattern.match(k) for k in tensors), sorted(tensors)[:4]
    assert sum(t.numel() for t in tensors.values()) == trained.trainable_params
    assert 0 < trained.trainable_params < trained.total_params / 10
    assert [h["step"] for h in trained.train.history] == [1, 2, 3, 4]


def test_lora_changes_images_and_weight_zero_restores_the_base(trained, tiny_base_dir):
    kwargs = dict(seed=3, steps=2, size=SIZE)
    base_image = run_pipeline(load_pipeline(tiny_base_dir, device="cpu"), "a cubist portrait painting", **kwargs)
    pipe = load_pipeline(tiny_base_dir, lora_dir=trained.adapter_path.parent, device="cpu")
    lora_image = run_pipeline(pipe, "a cubist portrait painting", **kwargs)
    assert np.abs(image_array(lora_image) - image_array(base_image)).max() > 0
    names = pipe.get_active_adapters()
    pipe.set_adapters(names, adapter_weights=[0.0] * len(names))
    assert np.array_equal(image_array(run_pipeline(pipe, "a cubist portrait painting", **kwargs)), image_array(base_image))
    # the one-call API gives the same LoRA image
    same = generate_image(tiny_base_dir, "a cubist portrait painting", lora_dir=trained.adapter_path.parent, device="cpu", **kwargs)
    assert np.array_equal(image_array(same), image_array(lora_image))


def test_interrupted_lora_run_resumes_to_the_same_adapter(trained, tiny_base_dir, tiny_art_dataset, tmp_path):
    data = datasets.load_from_disk(str(tiny_art_dataset))
    common = dict(base_dir=tiny_base_dir, dataset=data, settings=lora_settings(), out_dir=tmp_path / "lora",
                  checkpoint_dir=tmp_path / "ckpt", fingerprint="test")
    partial = train_lora(**common, stop_after=3)
    assert partial.adapter_path is None and not (tmp_path / "lora").exists()  # an interruption writes no adapter
    resumed = train_lora(**common)
    assert resumed.train.resumed_from_step == 3
    assert resumed.train.history == trained.train.history
    expected, got = load_file(trained.adapter_path), load_file(resumed.adapter_path)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_nan_loss_names_the_step_and_writes_no_adapter(tiny_base_dir, tiny_art_dataset, tmp_path):
    with pytest.raises(UserError, match=r"at step \d+.*(learning rate|fp32)"):
        train_lora(
            base_dir=tiny_base_dir, dataset=datasets.load_from_disk(str(tiny_art_dataset)),
            settings=lora_settings(lr=1e6, max_steps=6, checkpoint_every=100), out_dir=tmp_path / "lora",
            checkpoint_dir=tmp_path / "ckpt", fingerprint="nan",
        )
    assert not (tmp_path / "lora").exists()


def test_long_prompts_are_truncated_not_fatal(tiny_base_dir, tiny_art_dataset):
    long_prompt = " ".join(["an impressionist landscape painting"] * 125)  # 500 words
    image = generate_image(tiny_base_dir, long_prompt, seed=0, steps=1, size=SIZE, device="cpu")
    assert image.size == (SIZE, SIZE)

    pipe = load_pipeline(tiny_base_dir, device="cpu")
    rows = datasets.load_from_disk(str(tiny_art_dataset))["train"].select(range(2))
    examples = CaptionedImages(rows, pipe.tokenizer, resolution=SIZE, prompt_template="{caption}, " + long_prompt)
    item = examples[0]
    assert item["input_ids"].shape == (77,) and item["input_ids"][-1] == pipe.tokenizer.eos_token_id
    assert item["pixel_values"].shape == (3, SIZE, SIZE) and item["pixel_values"].min() >= -1
