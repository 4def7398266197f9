"""The typer app: help, config, and clear errors with exit code 2."""

from __future__ import annotations

from pathlib import Path

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
