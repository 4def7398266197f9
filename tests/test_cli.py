"""The typer app: help, config, and clear errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from squeezegen.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
STAGES = ["fetch-data", "preprocess", "fetch-base", "finetune-lora", "quantize", "benchmark",
          "train-rqvae", "train-refiner", "evaluate"]


def test_help_lists_every_stage_and_tool():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in STAGES + ["config", "generate", "reconstruct", "inspect"]:
        assert command in result.output


def test_config_prints_resolved_profile():
    result = runner.invoke(app, ["config", "--params", str(ROOT / "params.yaml"), "--profile", "full"])
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.output)
    assert cfg["profile"] == "full" and cfg["data"]["sd_size"] == 512 and cfg["rqvae"]["levels"] >= 1


def test_unknown_profile_is_a_clear_error():
    result = runner.invoke(app, ["config", "--params", str(ROOT / "params.yaml"), "--profile", "huge"])
    assert result.exit_code == 2
    assert "unknown profile 'huge'" in result.output and "toy, full" in result.output
    assert "Traceback" not in result.output


def test_bad_param_value_exits_2_naming_the_key(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["rqvae"]["levels"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["config", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 2 and "rqvae.levels" in result.output


def test_missing_files_are_clear_errors(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "missing.gguf")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["reconstruct", str(tmp_path / "missing.png")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(
        app, ["generate", "a cubist portrait painting", "--base", str(tmp_path / "nope"),
              "--params", str(ROOT / "params.yaml")]
    )
    assert result.exit_code == 2 and "--base" in result.output and "not found" in result.output


def _one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("where", ["under /proc", "under a file", "a folder"])
def test_an_unwritable_out_path_stops_sample_before_any_sampling(tmp_path, monkeypatch, where):
    import squeezegen.rq.generate as rq_generate

    def refuse(*args, **kwargs):
        raise AssertionError("the models were loaded for an output that cannot be written")

    monkeypatch.setattr(rq_generate.RQGenerator, "load", classmethod(refuse))
    (tmp_path / "afile").write_text("x")
    out = {"under /proc": Path("/proc/squeezegen-test.png"), "under a file": tmp_path / "afile" / "grid.png",
           "a folder": tmp_path}[where]
    result = runner.invoke(app, ["sample", "--style", "Impressionism", "--genre", "landscape", "--out", str(out),
                                 "--params", str(ROOT / "params.yaml")])
    line = _one_line_error(result)
    assert f"--out {out}" in line


def test_an_unwritable_export_path_stops_before_loading_anything(tmp_path, monkeypatch):
    import squeezegen.quant.gguf.export as export

    monkeypatch.setattr(export, "export_sdcpp", lambda *a, **k: (_ for _ in ()).throw(AssertionError("exported")))
    (tmp_path / "afile").write_text("x")
    line = _one_line_error(runner.invoke(app, ["export", str(tmp_path / "afile" / "sd.gguf")]))
    assert f"OUT {tmp_path / 'afile' / 'sd.gguf'}" in line and "is a file, not a folder" in line


def _fake_pipeline_folder(folder: Path) -> Path:
    """model_index.json + a valid unet and a text encoder whose weights are cut in half."""
    from safetensors.torch import save_file

    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "text_encoder": ["transformers", "CLIPTextModel"]}
    (folder / "unet").mkdir(parents=True)
    (folder / "text_encoder").mkdir()
    (folder / "model_index.json").write_text(json.dumps(index))
    for part in ("unet", "text_encoder"):
        (folder / part / "config.json").write_text("{}")
        save_file({"w": torch.zeros(64, 64)}, str(folder / part / "model.safetensors"))
    weights = folder / "text_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return weights


def test_a_truncated_safetensors_in_the_base_pipeline_is_one_line_naming_file_and_stage(tmp_path):
    weights = _fake_pipeline_folder(tmp_path / "base")
    line = _one_line_error(runner.invoke(app, ["export", str(tmp_path / "sd.gguf"), "--base", str(tmp_path / "base"),
                                               "--no-lora"]))
    assert f"{weights}: damaged or truncated" in line and "dvc repro fetch_base" in line
    assert not (tmp_path / "sd.gguf").exists()


def test_a_truncated_lora_is_one_line_naming_file_and_stage(tmp_path):
    from safetensors.torch import save_file

    lora = tmp_path / "lora"
    lora.mkdir()
    save_file({"w": torch.zeros(64, 64)}, str(lora / "pytorch_lora_weights.safetensors"))
    weights = lora / "pytorch_lora_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    line = _one_line_error(runner.invoke(app, ["generate", "a landscape", "--base", str(ROOT / "missing-base"),
                                               "--lora", str(lora), "--params", str(ROOT / "params.yaml")]))
    assert "--base" in line  # the base is checked first
    _fake_pipeline_folder(tmp_path / "base")
    (tmp_path / "base" / "text_encoder" / "model.safetensors").unlink()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "base" / "text_encoder" / "model.safetensors"))
    line = _one_line_error(runner.invoke(app, ["generate", "a landscape", "--base", str(tmp_path / "base"),
                                               "--lora", str(lora), "--out", str(tmp_path / "g.png"),
                                               "--params", str(ROOT / "params.yaml")]))
    assert f"{weights}: damaged or truncated" in line and "dvc repro finetune_lora" in line

