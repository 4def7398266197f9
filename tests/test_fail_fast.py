"""Stages check what they need before their first expensive step, and report the whole stage's memory."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from squeezegen.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_params(root: Path, **toy: dict) -> None:
    """params.yaml with the toy profile's sections updated from `toy` ({section: {key: value}})."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in toy.items():
        params["profiles"]["toy"].setdefault(section, {}).update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def test_benchmark_without_pretrained_lpips_fails_before_any_configuration(tmp_path, monkeypatch):
    from squeezegen.sd import benchmark as bench
    from squeezegen.sd.tiny import build_tiny_pipeline
    from squeezegen.stages import benchmark

    write_params(tmp_path, refiner={"lpips_pretrained": True})
    build_tiny_pipeline(seed=0).save_pretrained(tmp_path / "models" / "base")
    for folder in ("lora", "quantized"):
        (tmp_path / "models" / folder).mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SQUEEZEGEN_MLFLOW", "0")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no cached AlexNet weights

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    generated = []
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(bench, "run_configs", lambda *a, **k: generated.append(a))
    with pytest.raises(UserError, match="LPIPS"):
        benchmark.main()
    assert generated == [], "the LPIPS failure must come before the first configuration is generated"
    assert not (tmp_path / "metrics").exists()


def test_memory_check_names_the_knob_and_can_be_skipped(monkeypatch):
    from squeezegen.memory import fit as memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**30)
    with pytest.raises(UserError, match=r"needs an estimated 4\.0 GiB of RAM, 1\.0 GiB is free\. Lower profiles\.full\.refiner\.batch_size"):
        memory.check_memory(4 * 2**30, "cpu", what="train_refiner", knobs=["profiles.full.refiner.batch_size"])
    memory.check_memory(2**29, "cpu", what="x", knobs=["k"])  # fits: no error
    monkeypatch.setenv(memory.SKIP_CHECK_ENV, "1")
    memory.check_memory(4 * 2**30, "cpu", what="x", knobs=["k"])


def test_full_refiner_batch_is_refused_on_a_small_machine_before_loading_images(tmp_path, monkeypatch):
    from squeezegen.data import tensors
    from squeezegen.memory import fit as memory
    from squeezegen.stages import train_refiner

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "full"
    params["profiles"]["full"]["refiner"]["lpips_pretrained"] = False  # offline stand-in
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data" / "processed").mkdir(parents=True)
    (tmp_path / "models" / "rqvae").mkdir(parents=True)
    (tmp_path / "data" / "processed" / "dataset_dict.json").write_text("{}")
    (tmp_path / "models" / "rqvae" / "model.safetensors").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SQUEEZEGEN_MLFLOW", "0")
    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 * 2**30)  # an 8 GiB machine
    import datasets

    monkeypatch.setattr(datasets, "load_from_disk", lambda path: type("D", (), {"num_rows": {"train": 16, "val": 2}})())
    loaded = []
    monkeypatch.setattr(tensors, "load_image_tensors", lambda *a, **k: loaded.append(a))
    with pytest.raises(UserError, match="refiner.batch_size"):
        train_refiner.main()
    assert loaded == []


def test_lora_stage_peak_covers_the_sample_grid_and_the_trained_unet_is_freed_first(tmp_path, monkeypatch):
    """The measurement window: the reported stage peak is at least the RSS seen inside the grid."""
    import gc

    from diffusers import UNet2DConditionModel

    from squeezegen.memory.probes import current_rss
    from squeezegen.sd import generate
    from squeezegen.sd.hub import fetch_base
    from squeezegen.stages import finetune_lora

    write_params(tmp_path, lora={"max_steps": 2, "batch_size": 2}, data={"sd_size": 32}, sd={"infer_steps": 2})
    fetch_base("tiny", tmp_path / "models" / "base", seed=0)
    _write_processed(tmp_path / "data" / "processed")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SQUEEZEGEN_MLFLOW", "0")
    seen = {}

    def fake_grid(*args, **kwargs):
        gc.collect()
        seen["unets_alive"] = sum(isinstance(o, UNet2DConditionModel) for o in gc.get_objects())
        held = torch.ones(96 * 2**20)  # 384 MiB, touched: more than the tiny training ever holds
        seen["rss"] = current_rss()
        del held
        return Image.new("RGB", (8, 8))

    monkeypatch.setattr(generate, "before_after_grid", fake_grid)
    metrics = finetune_lora.main()
    assert seen["unets_alive"] == 0, "the trained UNet must be freed before the grid loads its own pipeline"
    slack = 2**20  # the kernel syncs per-thread RSS counters every 64 page faults: VmHWM may lag VmRSS a little
    assert metrics["peak_mem_bytes"] >= seen["rss"] - slack
    assert metrics["peak_mem_bytes_samples"] >= seen["rss"] - slack > metrics["peak_mem_bytes_train"]
    on_disk = json.loads((tmp_path / "metrics" / "lora.json").read_text())
    assert {"peak_mem_bytes", "peak_mem_bytes_train", "peak_mem_bytes_samples"} <= set(on_disk["perf"])  # CPU: RSS


def _write_processed(path: Path) -> None:
    import datasets
    import numpy as np

    from squeezegen.data.captions import all_captions

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]
    split = datasets.Dataset.from_dict(
        {"image_sd": images, "caption": all_captions()[:4]},
        features=datasets.Features({"image_sd": datasets.Image(), "caption": datasets.Value("string")}),
    )
    datasets.DatasetDict({"train": split, "val": split.select(range(1))}).save_to_disk(str(path))
