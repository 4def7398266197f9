"""The project's DVC config links a stage's outputs to the cache instead of storing them twice."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_stage_output_is_the_cache_file_not_a_copy(tmp_path):
    dvc = str(Path(sys.executable).parent / "dvc")
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True, env=env)
    shutil.copy(ROOT / ".dvc" / "config", tmp_path / ".dvc" / "config")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  make:\n    cmd: mkdir -p out && head -c 1000000 /dev/urandom > out/big.bin\n    outs:\n      - out\n"
    )
    subprocess.run([dvc, "repro", "-q"], cwd=tmp_path, check=True, env=env, capture_output=True)
    out = tmp_path / "out" / "big.bin"
    cached = [p for p in (tmp_path / ".dvc" / "cache").rglob("*") if p.is_file() and p.stat().st_size == 1_000_000]
    assert len(cached) == 1
    # one file on disk: a hard link (or a symlink where hard links are impossible) into the cache
    assert out.samefile(cached[0]), "the output was copied: it takes twice the disk"
    assert not (out.stat().st_mode & 0o222), "a linked output must be read-only (it is the cache's file)"
