"""What `dvc repro` does with bad params and failed stages, in small DVC projects built from the
real `check_params` stage: bad params fail before any other stage runs, naming the key and what
to do; a params change re-runs only the stages that read it; a failed stage loses no metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import pipeline_env, ran_stages

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")

# A stand-in for a real stage, run through the same entry point (`run_stage_script`).
FAKE_STAGE = '''
import json, os, signal, sys, types
from pathlib import Path

import yaml

from squeezegen.errors import UserError
from squeezegen.stages import run_stage_script


def main():
    how = yaml.safe_load(Path("fake.yaml").read_text())["how"]
    if how == "user_error":
        raise UserError("fake: a bad input")
    if how == "crash":
        raise RuntimeError("fake: a bug")
    if how == "ctrl_c":
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell may start jobs with SIGINT ignored
        os.kill(os.getpid(), signal.SIGINT)
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/fake.json").write_text(json.dumps({"value": how}))
    Path("metrics/fake.csv").write_text("step,loss\\n1,0.5\\n")


sys.modules["squeezegen.stages.fake"] = types.SimpleNamespace(main=main)
run_stage_script("fake")
'''


def _run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(pipeline_env(), PYTHONPATH=str(cwd / "src"), SQUEEZEGEN_MLFLOW="0")
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _git(project: Path, *args: str) -> str:
    return _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], project).stdout


@pytest.fixture
def project(tmp_path) -> Path:
    """check_params exactly as in dvc.yaml, plus two stages that read one key each."""
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (tmp_path / "stages").mkdir()
    shutil.copy(ROOT / "stages" / "check_params.py", tmp_path / "stages")
    for name in ("params.yaml", "requirements.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "stages" / "fake.py").write_text(FAKE_STAGE)
    (tmp_path / "fake.yaml").write_text("how: first\n")
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stages = {
        "check_params": spec["stages"]["check_params"],
        "fake": {"cmd": "python stages/fake.py", "deps": ["stages/fake.py", "fake.yaml", "data/params_checked.json"],
                 "params": ["seed"], "metrics": [{"metrics/fake.json": {"cache": False}}],
                 "plots": [{"metrics/fake.csv": {"cache": False}}]},
        "guided": {"cmd": "echo guided > guided.txt", "deps": ["data/params_checked.json"],
                   "params": ["prior.guidance_scale"], "outs": ["guided.txt"]},
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    _git(tmp_path, "init", "-q", "-b", "main")
    _run([DVC, "init", "-q"], tmp_path)
    shutil.copy(ROOT / ".dvc" / "config", tmp_path / ".dvc" / "config")
    first = _run([DVC, "repro"], tmp_path)
    assert ran_stages(first.stdout) == {"check_params", "fake", "guided"}, first.stdout
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "a reproduced project")
    return tmp_path


def _set_params(project: Path, edit) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    edit(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_a_params_change_reruns_the_check_and_only_the_stages_that_read_it(project):
    _set_params(project, lambda p: p["prior"].update(guidance_scale=p["prior"]["guidance_scale"] + 0.5))
    again = _run([DVC, "repro"], project)
    assert ran_stages(again.stdout) == {"check_params", "guided"}, again.stdout
    assert "params.yaml is valid (profiles: toy, full)" in again.stdout
    assert json.loads((project / "data/params_checked.json").read_text()) == {"params": "valid"}
    noop = _run([DVC, "status"], project)
    assert "up to date" in noop.stdout, noop.stdout


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda p: p["prior"].update(guidence_scale=2), "error: prior.guidence_scale: unknown key; did you mean prior.guidance_scale?"),
        (lambda p: p["profiles"]["full"]["prior"].update(batch_sise=4), "error: prior.batch_sise: unknown key; did you mean prior.batch_size?"),
        (lambda p: p["prior"].update(guidance_scale=-2), "error: prior.guidance_scale: must satisfy 0.0 <= value, got -2.0"),
        (lambda p: p.update(profile="nosuch"), "error: profile: unknown profile 'nosuch'; allowed: toy, full"),
    ],
    ids=["typo", "typo-in-the-other-profile", "out-of-range", "unknown-profile"],
)
def test_bad_params_fail_dvc_repro_in_the_check_before_any_other_stage(project, edit, expected):
    _set_params(project, edit)
    (project / "fake.yaml").write_text("how: second\n")  # fake would re-run, if the check let it
    result = _run([DVC, "repro"], project, check=False)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert expected in out, out
    assert "exited with 2" in out and "Traceback" not in out
    assert ran_stages(result.stdout) == {"check_params"}
    assert json.loads((project / "metrics/fake.json").read_text()) == {"value": "first"}


@pytest.mark.parametrize("how", ["user_error", "crash", "ctrl_c"])
def test_a_failed_stage_leaves_its_metrics_files_and_git_status_clean(project, how):
    (project / "fake.yaml").write_text(f"how: {how}\n")
    _git(project, "commit", "-qam", f"fake fails with {how}")
    result = _run([DVC, "repro"], project, check=False)
    assert result.returncode != 0 and "failed to reproduce 'fake'" in result.stderr, result.stderr
    assert "put back metrics/fake.json" in result.stderr and "put back metrics/fake.csv" in result.stderr
    assert json.loads((project / "metrics/fake.json").read_text()) == {"value": "first"}
    assert _git(project, "status", "--porcelain") == ""


def test_lost_metrics_come_back_from_git_when_the_dvc_cache_lacks_them(project):
    shutil.rmtree(project / ".dvc" / "cache")
    (project / "fake.yaml").write_text("how: crash\n")
    _git(project, "commit", "-qam", "fake crashes")
    result = _run([DVC, "repro"], project, check=False)
    assert result.returncode != 0
    assert json.loads((project / "metrics/fake.json").read_text()) == {"value": "first"}
    assert _git(project, "status", "--porcelain") == ""


def test_the_check_puts_back_metrics_a_killed_stage_left_deleted(project):
    os.remove(project / "metrics/fake.json")  # what DVC leaves when the stage is SIGKILLed
    _set_params(project, lambda p: p["prior"].update(top_k=7))
    result = _run([DVC, "repro", "check_params"], project)
    assert "put back metrics/fake.json" in result.stdout
    assert json.loads((project / "metrics/fake.json").read_text()) == {"value": "first"}


def test_the_check_removes_checkpoints_of_up_to_date_stages_only(project):
    for stage in ("fake", "guided"):
        (project / "checkpoints" / stage / "step_2").mkdir(parents=True)
    (project / "fake.yaml").write_text("how: second\n")  # fake is now out of date: its checkpoint may resume it
    _set_params(project, lambda p: p["prior"].update(top_k=7))  # guided's own param is untouched: up to date
    result = _run([DVC, "repro", "check_params"], project)
    assert "removed checkpoints/guided" in result.stderr, result.stderr
    assert not (project / "checkpoints" / "guided").exists()
    assert (project / "checkpoints" / "fake" / "step_2").is_dir()
