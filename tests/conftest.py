"""Shared fixtures: a temporary copy of the repository for pipeline (DVC) tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _project_files() -> list[str]:
    """Tracked + untracked-but-not-ignored files: what a fresh clone plus local edits holds."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def pipeline_env() -> dict[str, str]:
    """Environment for `dvc` in a temp repo: the venv's python first on PATH, offline, no shared store."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("SQUEEZEGEN_PIPELINE_RUN", None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DVC_NO_ANALYTICS="1", TQDM_MININTERVAL="5")
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 3600) -> subprocess.CompletedProcess:
    """Run a command in the temp repo, capturing output (shown on failure)."""
    proc = subprocess.run(cmd, cwd=cwd, env=pipeline_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(Path(sys.executable).parent / "dvc"), *args], cwd=cwd, check=check)


def make_repo_copy(dest: Path) -> Path:
    """Copy the project into `dest`, `git init` and commit it (dvc exp run needs a commit)."""
    for rel in _project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    run(["git", "init", "-q", "-b", "main"], cwd=dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], cwd=dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "snapshot"], cwd=dest)
    return dest


def ran_stages(output: str) -> set[str]:
    """Stage names `dvc repro` reports as running."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="session")
def repo_copy(tmp_path_factory) -> Path:
    return make_repo_copy(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module's tests: on a shared 2-core machine two contending
    threads run ~10× slower. Modules opt in with `pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
