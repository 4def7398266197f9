"""One MLflow run per stage, tagged; metrics json and MLflow hold the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from squeezegen.config import load_config
from squeezegen.tracking import flatten, stage_run, tracking_uri

ROOT = Path(__file__).resolve().parents[1]


def test_flatten_keeps_numbers_and_nests_keys():
    flat = flatten({"a": {"b": 1, "c": [2.5, 3]}, "s": "text", "ok": True, "nan": float("nan")})
    assert flat == {"a.b": 1.0, "a.c.0": 2.5, "a.c.1": 3.0, "ok": 1.0}


def test_tracking_uri_is_absolute_and_overridable(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    # DVC's temporary experiment folders point back at the main repo's store
    assert tracking_uri(tmp_path / ".dvc" / "tmp" / "exps" / "x") == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri(tmp_path) == "http://mlflow.example:5000"


def test_stage_run_logs_tags_params_and_metrics(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-test")
    monkeypatch.setenv("SQUEEZEGEN_PIPELINE_RUN", "pipe-123")
    cfg = load_config(ROOT / "params.yaml")
    with stage_run("train_rqvae", cfg, root=tmp_path) as run:
        run.log_step(1, {"loss": 2.0})
        run.log_step(2, {"loss": 1.0})
        path = run.write_metrics("rqvae", {"psnr": 20.5, "psnr_by_levels": [18.0, 20.5]})
    assert json.loads(path.read_text()) == {"psnr": 20.5, "psnr_by_levels": [18.0, 20.5]}
    assert path == tmp_path / "metrics" / "rqvae.json"
    assert list((tmp_path / "mlruns").rglob("rqvae.json")), "artifacts belong next to the store"

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    (found,) = mlflow.search_runs(experiment_names=["squeezegen"], output_format="list")
    assert found.data.tags["stage"] == "train_rqvae" and found.data.tags["profile"] == "toy"
    assert found.data.tags["dvc_exp_name"] == "exp-test" and found.data.tags["pipeline_run"] == "pipe-123"
    assert found.data.params["rqvae.levels"] == str(cfg.rqvae.levels)
    assert "lora.rank" not in found.data.params  # only the stage's own sections
    assert found.data.metrics["psnr"] == 20.5 and found.data.metrics["psnr_by_levels.1"] == 20.5
    history = mlflow.tracking.MlflowClient().get_metric_history(found.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]


def test_mlflow_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZEGEN_MLFLOW", "0")
    with stage_run("preprocess", load_config(ROOT / "params.yaml"), root=tmp_path) as run:
        run.write_metrics("data", {"n_in": 3})
    assert json.loads((tmp_path / "metrics/data.json").read_text()) == {"n_in": 3}
    assert not (tmp_path / "mlflow.db").exists()
