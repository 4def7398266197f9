"""A model folder (model.safetensors + config.json) round-trips, and every way it can be broken
gives one UserError naming the file and the stage that writes it."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from squeezegen.errors import UserError
from squeezegen.model_folder import CONFIG_FILE, WEIGHTS_FILE, load_model_folder, read_model_config, save_model_folder

FMT = "tiny-v1"


def build(config: dict) -> nn.Module:
    return nn.Linear(config["model"]["width"], 2)


def saved(tmp_path) -> tuple:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    folder = save_model_folder(model, tmp_path / "m", {"format": FMT, "model": {"width": 3}, "meta": {"steps": 7}})
    return model, folder


def load(folder):
    return load_model_folder(folder, build, what="tiny model", fmt=FMT, stage="train_tiny")


def test_round_trip_keeps_weights_and_meta(tmp_path):
    model, folder = saved(tmp_path)
    loaded = load(folder)
    assert torch.equal(loaded.weight, model.weight) and loaded.meta == {"steps": 7} and not loaded.training
    assert json.loads((folder / CONFIG_FILE).read_text())["model"] == {"width": 3}


def test_truncated_weights_name_the_file_and_the_stage(tmp_path):
    _, folder = saved(tmp_path)
    weights = folder / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(UserError, match=rf"{WEIGHTS_FILE}: damaged or truncated.*dvc repro train_tiny"):
        load(folder)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda f: (f / CONFIG_FILE).unlink(), "no trained tiny model here"),
        (lambda f: (f / CONFIG_FILE).write_text("{not json"), "not valid JSON"),
        (lambda f: (f / CONFIG_FILE).write_text(json.dumps({"format": "other"})), "not a tiny model config of format"),
        (lambda f: (f / CONFIG_FILE).write_text(json.dumps({"format": FMT, "model": {"width": 5}})), "cannot rebuild"),
    ],
)
def test_a_broken_folder_is_one_clear_error(tmp_path, breakage, message):
    _, folder = saved(tmp_path)
    breakage(folder)
    with pytest.raises(UserError, match=message):
        load(folder)
    if message != "cannot rebuild":
        with pytest.raises(UserError, match="train_tiny"):
            read_model_config(folder, what="tiny model", fmt=FMT, stage="train_tiny")


def test_check_model_files_names_the_damaged_file_and_the_stage(tmp_path):
    from safetensors.torch import save_file

    from squeezegen.model_folder import check_model_files

    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "config.json").write_text("{}")
    save_file({"w": torch.zeros(8, 8)}, str(folder / "sub" / "w.safetensors"))
    assert check_model_files(folder, what="thing", stage="make_thing", required=("sub/config.json",)) == folder
    with pytest.raises(UserError, match=r"m/other.json: missing.*dvc repro make_thing"):
        check_model_files(folder, what="thing", stage="make_thing", required=("other.json",))
    with pytest.raises(UserError, match=r"nowhere: no thing here; run the make_thing stage first"):
        check_model_files(tmp_path / "nowhere", what="thing", stage="make_thing")
    (folder / "sub" / "config.json").write_text("{")
    with pytest.raises(UserError, match=r"sub/config.json: not valid JSON.*dvc repro make_thing"):
        check_model_files(folder, what="thing", stage="make_thing")
    (folder / "sub" / "config.json").write_text("{}")
    (folder / "sub" / "w.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(UserError, match=r"sub/w.safetensors: damaged or truncated.*dvc repro make_thing"):
        check_model_files(folder, what="thing", stage="make_thing")


def test_a_truncated_refiner_names_the_weights_file_and_the_stage(tmp_path):
    from squeezegen.rq.refiner import Refiner, load_refiner, save_refiner

    folder = save_refiner(Refiner.build(channels=(8, 8), image_size=16), tmp_path / "refiner")
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match=rf"{weights}: damaged or truncated.*dvc repro train_refiner"):
        load_refiner(folder)
