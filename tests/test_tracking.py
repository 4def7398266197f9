"""One MLflow run per stage, tagged; metrics json and MLflow hold the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_a_copied_project_keeps_its_artifacts_in_its_own_folder(tmp_path, monkeypatch):
    import shutil

    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SQUEEZEGEN_PIPELINE_RUN", "pipe-copy")
    cfg = load_config(ROOT / "params.yaml")
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    with stage_run("train_rqvae", cfg, root=original) as run:
        run.write_metrics("rqvae", {"psnr": 20.5})
    shutil.copytree(original, copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exports it: a new process has none
    with stage_run("train_judge", cfg, root=copy) as run:
        run.write_metrics("judge", {"style_acc": 0.5})

    assert not list((original / "mlruns").rglob("judge.json")), "the copy wrote into the original folder"
    assert list((copy / "mlruns").rglob("judge.json"))
    mlflow.set_tracking_uri(f"sqlite:///{copy}/mlflow.db")
    experiment = mlflow.get_experiment_by_name("squeezegen")
    assert experiment.artifact_location == (copy / "mlruns").as_uri()
    found = mlflow.search_runs(experiment_names=["squeezegen"], output_format="list")
    assert {r.data.tags["stage"] for r in found} == {"train_rqvae", "train_judge"}
    for r in found:  # the earlier run's artifacts are read from the copy's own mlruns/ too
        assert r.info.artifact_uri.startswith((copy / "mlruns").as_uri() + "/")
        assert mlflow.artifacts.list_artifacts(run_id=r.info.run_id, artifact_path="metrics")
    mlflow.set_tracking_uri(f"sqlite:///{original}/mlflow.db")
    assert mlflow.get_experiment_by_name("squeezegen").artifact_location == (original / "mlruns").as_uri()


def test_mlflow_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZEGEN_MLFLOW", "0")
    with stage_run("preprocess", load_config(ROOT / "params.yaml"), root=tmp_path) as run:
        run.write_metrics("data", {"n_in": 3})
    assert json.loads((tmp_path / "metrics/data.json").read_text()) == {"n_in": 3}
    assert not (tmp_path / "mlflow.db").exists()


def test_split_perf_moves_speed_and_load_figures_under_perf_and_merge_undoes_it():
    from squeezegen.metrics_files import memory_perf_keys, merge_perf, split_perf

    metrics = {
        "psnr": 20.0, "seconds": 1.5, "steps_per_s": 3.0, "resumed_from_step": 200,
        "fp16": {"weights_bytes": 10, "peak_bytes": 99, "seconds_per_image": 0.3, "peak_rss": 7,
                 "phases": {"decode": {"peak_rss": 5}}},
        "perf": {"already": 1},
    }
    split = split_perf(metrics, machine_dependent=memory_perf_keys("cpu"))
    assert split == {
        "psnr": 20.0,
        "fp16": {"weights_bytes": 10},
        "perf": {"already": 1, "seconds": 1.5, "steps_per_s": 3.0, "resumed_from_step": 200,  # what the timings cover
                 "fp16": {"peak_bytes": 99, "seconds_per_image": 0.3, "peak_rss": 7, "phases": {"decode": {"peak_rss": 5}}}},
    }
    on_cuda = split_perf(metrics, machine_dependent=memory_perf_keys("cuda"))
    assert on_cuda["fp16"]["peak_bytes"] == 99  # CUDA's allocated bytes are exact: outside perf
    assert merge_perf(split) == {**{k: v for k, v in metrics.items() if k != "perf"}, "already": 1}


def test_stage_run_tags_package_versions_lock_hash_and_dvc_md5_of_deps_and_outs(tmp_path, monkeypatch):
    import hashlib
    from importlib import metadata

    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / ".dvcignore").write_text("__pycache__/\n")
    (tmp_path / "requirements.lock").write_text("torch==0\n")
    (tmp_path / "code").mkdir()
    (tmp_path / "code/a.py").write_text("x = 1\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  quantize:\n    cmd: python x.py\n    deps:\n      - code\n      - code/a.py\n      - requirements.lock\n"
        "    outs:\n      - models/out.bin\n    metrics:\n      - metrics/quantize.json:\n          cache: false\n"
    )

    def tags_after_run() -> dict[str, str]:
        with stage_run("quantize", load_config(ROOT / "params.yaml"), root=tmp_path) as run:
            (tmp_path / "models").mkdir(exist_ok=True)
            (tmp_path / "models/out.bin").write_bytes(b"weights")
            run.write_metrics("quantize", {"bytes": 7, "seconds": 0.1})
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
        runs = mlflow.search_runs(experiment_names=["squeezegen"], output_format="list", order_by=["attributes.start_time DESC"])
        return runs[0].data.tags

    tags = tags_after_run()
    md5 = lambda rel: hashlib.md5((tmp_path / rel).read_bytes()).hexdigest()  # noqa: E731
    assert tags["dvc.dep.code/a.py"] == md5("code/a.py")
    assert tags["dvc.dep.requirements.lock"] == md5("requirements.lock")
    assert tags["dvc.out.models/out.bin"] == md5("models/out.bin")
    assert tags["dvc.out.metrics/quantize.json"] == md5("metrics/quantize.json")
    assert tags["dvc.dep.code"].endswith(".dir")
    assert tags["lock_sha256"] == hashlib.sha256(b"torch==0\n").hexdigest()
    assert tags["pkg.torch"] == metadata.version("torch") and tags["pkg.gguf"] == metadata.version("gguf")
    assert {f"pkg.{name}" for name in ("diffusers", "transformers", "peft", "accelerate", "bitsandbytes",
                                      "vector-quantize-pytorch", "lpips", "numpy")} <= set(tags)

    (tmp_path / "code/__pycache__").mkdir()
    (tmp_path / "code/__pycache__/a.pyc").write_bytes(b"ignored by .dvcignore, as DVC does")
    assert tags_after_run()["dvc.dep.code"] == tags["dvc.dep.code"]
    (tmp_path / "code/b.py").write_text("y = 2\n")
    assert tags_after_run()["dvc.dep.code"] != tags["dvc.dep.code"]
