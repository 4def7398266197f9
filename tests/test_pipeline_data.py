"""The data stages through DVC in a temporary copy of the repo (fresh clone behaviour)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import dvc, ran_stages
from datasets import load_from_disk

pytestmark = pytest.mark.slow


def test_data_stages_repro_cache_and_rerun_only_what_changed(repo_copy):
    first = dvc("repro", "preprocess", cwd=repo_copy)
    assert ran_stages(first.stdout) == {"check_params", "fetch_data", "preprocess"}, first.stdout

    manifest = json.loads((repo_copy / "data/raw/manifest.json").read_text())
    assert manifest["source"] == "synthetic"
    metrics = json.loads((repo_copy / "metrics/data.json").read_text())
    n = yaml.safe_load((repo_copy / "params.yaml").read_text())["profiles"]["toy"]["data"]["num_images"]
    assert metrics["n_in"] == n and metrics["n_kept"] == n and metrics["n_skipped"] == 0
    assert metrics["n_train"] + metrics["n_val"] == n and metrics["n_val"] >= 1
    assert 0 < metrics["score_mean"] < 100 and metrics["score_std"] > 0
    ds = load_from_disk(str(repo_copy / "data/processed"))
    assert set(ds) == {"train", "val"}
    row = ds["train"][0]
    assert row["image_sd"].size == (64, 64) and row["image_rq"].size == (64, 64) and row["caption"]

    again = dvc("repro", "preprocess", cwd=repo_copy)
    assert ran_stages(again.stdout) == set(), again.stdout

    # a preprocess-only knob re-runs preprocess (after the params check), not fetch_data
    params = repo_copy / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("val_fraction: 0.1 ", "val_fraction: 0.2 "))
    try:
        changed = dvc("repro", "preprocess", cwd=repo_copy)
        assert ran_stages(changed.stdout) == {"check_params", "preprocess"}, changed.stdout
        assert json.loads((repo_copy / "metrics/data.json").read_text())["n_val"] > metrics["n_val"]
    finally:
        params.write_text(original)
        dvc("repro", "preprocess", cwd=repo_copy)  # back to the committed state (from the run cache)
