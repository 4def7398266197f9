"""params.yaml → typed config: every error names the key path and what is allowed."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from squeezegen.config import ConfigError, load_config, resolve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_resolve_for_every_profile(raw):
    for name in raw["profiles"]:
        cfg = resolve(raw, name)
        assert cfg.profile == name
    toy = resolve(raw)
    assert toy.profile == "toy" and toy.data.source == "synthetic" and toy.sd.base == "tiny"
    full = resolve(raw, "full")
    assert (full.data.sd_size, full.data.rq_size, full.rqvae.downsample) == (512, 256, 16)
    assert full.data.rq_size // full.rqvae.downsample == 16  # 16x16 code grid at full scale


def test_config_is_frozen_and_typed(raw):
    cfg = resolve(raw)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rqvae.levels = 2  # type: ignore[misc]
    assert isinstance(cfg.lora.target_modules, tuple) and isinstance(cfg.lora.alpha, float)


def _mutate(raw, path, value):
    out = copy.deepcopy(raw)
    node = out
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return out


@pytest.mark.parametrize(
    "path, value, must_mention",
    [
        ("rqvae.levles", 3, ["rqvae.levles", "unknown key", "levels"]),
        ("rqvae.levels", 0, ["rqvae.levels", "1 <= value"]),
        ("rqvae.levels", "four", ["rqvae.levels", "an integer"]),
        ("rqvae.levels", True, ["rqvae.levels", "an integer"]),
        ("lora.lr", -1.0, ["lora.lr", "0.0 < value"]),
        ("lora.mixed_precision", "fp8", ["lora.mixed_precision", "'fp32'", "'bf16'"]),
        ("lora.mixed_precision", False, ["lora.mixed_precision", "'fp32'"]),
        ("quantize.unet_type", "Q4_0", ["quantize.unet_type", "'Q4_K'"]),
        ("quantize.keep_patterns", ["conv_in", "(unclosed"], ["quantize.keep_patterns[1]", "regular expression"]),
        ("benchmark.configs", ["q4k_unet"], ["benchmark.configs", "fp16"]),
        ("profiles.toy.rqvae.downsample", 3, ["rqvae.downsample", "power of two"]),
        ("profiles.toy.rqvae.channels", [8, 8], ["rqvae.channels", "log2(downsample)+1"]),
        ("profiles.toy.data.rq_size", 66, ["rqvae.downsample", "not divisible"]),
        ("profiles.toy.data.sd_size", 60, ["data.sd_size", "multiple of 8"]),
        ("profiles.toy.data.source", "imagenet", ["data.source", "'synthetic'", "'lapis'", "'folder'"]),
        ("data.val_fraction", 1.0, ["data.val_fraction", "value < 1.0"]),
        ("seed", KeyError, ["seed", "missing"]),
        ("profile", "huge", ["profile", "unknown profile 'huge'", "toy, full"]),
    ],
)
def test_bad_values_name_the_key(raw, path, value, must_mention):
    with pytest.raises(ConfigError) as err:
        resolve(_mutate(raw, path, value))
    for text in must_mention:
        assert text in str(err.value), str(err.value)


def test_key_in_both_places_is_an_error(raw):
    bad = _mutate(raw, "rqvae.max_steps", 10)  # a scale knob also set at the top level
    with pytest.raises(ConfigError, match=r"rqvae\.max_steps: set both at the top level and in profiles\.toy"):
        resolve(bad)
    # ...even when the clash is in a profile that is not the active one
    bad = _mutate(raw, "profiles.full.lora.rank", 8)
    with pytest.raises(ConfigError, match=r"lora\.rank: set both.*profiles\.full"):
        resolve(bad)


def test_override_profile_and_missing_file(tmp_path):
    assert load_config(ROOT / "params.yaml", profile="full").profile == "full"
    with pytest.raises(ConfigError, match="no such params file"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "p.yaml").write_text("profile: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "p.yaml")


def test_every_knob_in_params_yaml_is_commented():
    lines = (ROOT / "params.yaml").read_text().splitlines()
    full_starts = next(i for i, line in enumerate(lines) if line.startswith("  full:"))
    for n, line in enumerate(lines[:full_starts], 1):  # the full profile mirrors toy's commented keys
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            assert "#" in stripped, f"params.yaml line {n} has no comment: {line!r}"


def test_params_survive_a_dvc_style_rewrite(tmp_path):
    """`dvc exp run -S` rewrites params.yaml with ruamel (YAML 1.2, strings unquoted); our YAML 1.1
    loader must read the rewritten file to the same config (a bare `no` would turn into false)."""
    from ruamel.yaml import YAML

    rt = YAML()
    data = rt.load((ROOT / "params.yaml").read_text())
    data["rqvae"]["levels"] = 2
    data["rqvae"]["scales"] = [8, 16]  # as `-S 'rqvae.scales=[8, 16]'` writes it
    with open(tmp_path / "params.yaml", "w") as f:
        rt.dump(data, f)
    before, after = load_config(ROOT / "params.yaml"), load_config(tmp_path / "params.yaml")
    assert after.rqvae.levels == 2 and after.rqvae.scales == (8, 16)
    assert dataclasses.replace(after, rqvae=before.rqvae) == before


@pytest.mark.parametrize("scales, levels, words", [
    ([4, 8, 16, 16], 2, ["rqvae.scales", "rqvae.levels is 2", "rqvae.scales=[8, 16]"]),
    ([8, 4], 2, ["rqvae.scales", "coarse to fine"]),
    ([4, 8, 8], 3, ["rqvae.scales", "full 16×16 grid"]),
    ("spiral", 4, ["rqvae.scales", "'equal', 'pyramid'"]),
])
def test_rqvae_scales_must_fit_the_levels_and_end_at_the_full_grid(scales, levels, words):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["rqvae"].update(scales=scales, levels=levels)
    with pytest.raises(ConfigError) as err:
        resolve(raw)
    assert all(w in str(err.value) for w in words), str(err.value)
