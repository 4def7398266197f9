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
