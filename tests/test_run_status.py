"""MLflow run status: FAILED when a stage raises, KILLED on SIGTERM / Ctrl-C, stale RUNNING runs ended."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from squeezegen.config import load_config
from squeezegen.tracking import EXPERIMENT, stage_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty MLflow store in tmp_path (the default sqlite location for root=tmp_path)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SQUEEZEGEN_MLFLOW", raising=False)
    monkeypatch.setenv("SQUEEZEGEN_PIPELINE_RUN", "pipe-test")
    return tmp_path


def runs(root: Path) -> list:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    return mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list", order_by=["attributes.start_time ASC"])


def test_a_stage_that_raises_leaves_its_run_failed(store):
    cfg = load_config(ROOT / "params.yaml")
    with pytest.raises(RuntimeError, match="boom"):
        with stage_run("train_rqvae", cfg, root=store):
            raise RuntimeError("boom")
    (found,) = runs(store)
    assert found.info.status == "FAILED"


def test_a_stage_that_finishes_is_finished_and_ctrl_c_is_killed(store):
    cfg = load_config(ROOT / "params.yaml")
    with stage_run("preprocess", cfg, root=store):
        pass
    with pytest.raises(KeyboardInterrupt):
        with stage_run("preprocess", cfg, root=store):
            raise KeyboardInterrupt
    assert [r.info.status for r in runs(store)] == ["FINISHED", "KILLED"]


def test_sigterm_ends_the_run_killed_and_exits_143(store):
    script = textwrap.dedent(f"""
        import os, signal, time
        from squeezegen.config import load_config
        from squeezegen.tracking import stage_run
        with stage_run("train_refiner", load_config({str(ROOT / "params.yaml")!r}), root=__import__("pathlib").Path({str(store)!r})):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    (found,) = runs(store)
    assert found.info.status == "KILLED"


def test_stale_running_runs_of_any_stage_are_marked_failed_when_a_stage_runs(store):
    import mlflow
    from mlflow.tracking import MlflowClient

    cfg = load_config(ROOT / "params.yaml")
    with stage_run("finetune_lora", cfg, root=store):  # creates the experiment
        pass
    client = MlflowClient()
    experiment = mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()

    def running(stage: str, **tags: str) -> str:
        return client.create_run(experiment, tags={"stage": stage, **tags}, run_name=stage).info.run_id

    killed = running("finetune_lora", host=here, pid=str(dead.pid), pid_start="1")  # a process that is gone
    alive = running("finetune_lora", host=here, pid=str(os.getpid()),
                    pid_start=Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
    elsewhere = running("finetune_lora", host=here + "-other", pid="1", pid_start="1")  # cannot be judged from here
    other_stage = running("quantize", host=here, pid=str(dead.pid), pid_start="1")  # restored from DVC's run cache, say
    with stage_run("finetune_lora", cfg, root=store):
        pass
    status = {run_id: client.get_run(run_id).info.status for run_id in (killed, alive, elsewhere, other_stage)}
    assert status == {killed: "FAILED", alive: "RUNNING", elsewhere: "RUNNING", other_stage: "FAILED"}
    assert "stale" in client.get_run(killed).data.tags["ended_by"]


def test_the_params_check_ends_stale_runs_without_a_stage_run(store):
    import mlflow
    from mlflow.tracking import MlflowClient

    from squeezegen.tracking import end_stale_runs

    assert end_stale_runs(store) == [] and not (store / "mlflow.db").exists()  # no store: nothing made
    with stage_run("train_judge", load_config(ROOT / "params.yaml"), root=store):
        pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    experiment = mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
    client = MlflowClient()
    killed = client.create_run(experiment, tags={"stage": "train_prior", "host": socket.gethostname(),
                                                 "pid": str(dead.pid), "pid_start": "1"}).info.run_id
    assert end_stale_runs(store) == [killed]
    assert client.get_run(killed).info.status == "FAILED"
