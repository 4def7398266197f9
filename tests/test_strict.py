"""Strict mode sets what it claims before torch's first kernel runs: each check starts a fresh
Python process (as a stage script does), applies strict mode and reads every setting back from
the libraries themselves (MKL's and oneDNN's verbose logs, torch's and numpy's own getters)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from squeezegen import strict
from squeezegen.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# Runs in the child: apply strict mode first, then report what numpy, torch, MKL and oneDNN use.
PROBE = """
import json, sys
from squeezegen import strict
loaded_before = [m for m in ("numpy", "torch") if m in sys.modules]
on = strict.apply(sys.argv[1], None if sys.argv[2] == "-" else sys.argv[2])
import numpy as np
import torch
from numpy._core._multiarray_umath import __cpu_features__
a = torch.randn(64, 64)
a @ a                      # one MKL sgemm: MKL_VERBOSE logs its CNR branch and thread count
torch.randn(2, 2).to_mkldnn()  # one oneDNN reorder: ONEDNN_VERBOSE logs the ISA it dispatches to
torch.nn.functional.conv2d(torch.randn(16, 8, 16, 16), torch.randn(8, 8, 3, 3))  # a batch torch sends to oneDNN when enabled
print("PROBE " + json.dumps({
    "on": on, "loaded_before": loaded_before, "active": strict.active(),
    "threads": torch.get_num_threads(),
    "deterministic": torch.are_deterministic_algorithms_enabled(),
    "capability": torch.backends.cpu.get_cpu_capability(),
    "mkldnn": torch.backends.mkldnn.enabled,
    "nnpack": torch._C._get_nnpack_enabled(),
    "matmul_precision": torch.get_float32_matmul_precision(),
    "cuda": torch.cuda.is_available(),
    "numpy_x86_v4": bool(__cpu_features__.get("X86_V4")),
}))
"""


def _write_params(tmp_path: Path, *, strict_on: bool, threads: int = 2, onednn: bool = False, profile: str = "toy") -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["repro"] = {"strict": strict_on, "threads": threads, "onednn": onednn}
    raw["profile"] = profile
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _probe(params: Path, *, env: dict[str, str] | None = None, profile: str | None = None) -> tuple[dict, str]:
    """Run PROBE in a fresh interpreter; (its report, its stderr + MKL/oneDNN verbose lines)."""
    child_env = {k: v for k, v in os.environ.items() if k not in strict.pinned_env(1)}
    child_env.update(PYTHONPATH=str(ROOT / "src"), MKL_VERBOSE="1", ONEDNN_VERBOSE="1", **(env or {}))
    out = subprocess.run([sys.executable, "-c", PROBE, str(params), profile or "-"], env=child_env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("PROBE ")]
    return json.loads(line[len("PROBE "):]), out.stdout + out.stderr


def _verbose(log: str, prefix: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith(prefix)]


def _onednn_convolutions(log: str) -> list[str]:
    return [line for line in _verbose(log, "onednn_verbose") if ",exec," in line and ",convolution," in line]


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="strict mode pins x86-64 ISAs")
def test_strict_params_pin_every_library_before_its_first_kernel(tmp_path):
    report, log = _probe(_write_params(tmp_path, strict_on=True, threads=2))
    assert report["on"] and report["active"] and report["loaded_before"] == []
    assert report["threads"] == 2
    assert report["deterministic"] is True
    assert report["capability"] == "AVX2"  # ATen's kernels (this machine may well have AVX-512)
    assert report["mkldnn"] is False and report["nnpack"] is False
    assert report["matmul_precision"] == "highest"
    assert report["cuda"] is False
    assert report["numpy_x86_v4"] is False
    sgemms = _verbose(log, "MKL_VERBOSE SGEMM")  # the matmul, then the convolution as im2col + one gemm per image
    assert len(sgemms) == 17 and all("CNR:COMPATIBLE" in s and "Dyn:0" in s and "NThr:2" in s for s in sgemms), sgemms
    isa = [line for line in _verbose(log, "onednn_verbose") if ",isa:" in line]
    assert isa and isa[0].endswith("isa:Intel AVX2"), isa
    assert _onednn_convolutions(log) == []  # convolutions run in ATen + MKL, not oneDNN
    assert "strict mode: 2 threads" in log and "oneDNN off" in log


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="strict mode pins x86-64 ISAs")
def test_onednn_kept_for_convolutions_runs_avx2_kernels(tmp_path):
    report, log = _probe(_write_params(tmp_path, strict_on=True, onednn=True))
    assert report["on"] and report["mkldnn"] is True and report["capability"] == "AVX2"
    (conv,) = _onednn_convolutions(log)
    assert "avx2" in conv and "avx512" not in conv and "amx" not in conv, conv
    assert "oneDNN AVX2" in log


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="strict mode pins x86-64 ISAs")
def test_the_environment_variable_turns_it_on_and_the_thread_count_follows_the_params(tmp_path):
    report, log = _probe(_write_params(tmp_path, strict_on=False, threads=1), env={strict.ENV: "1"})
    assert report["on"] and report["threads"] == 1 and report["capability"] == "AVX2"
    sgemms = _verbose(log, "MKL_VERBOSE SGEMM")
    assert sgemms and all("CNR:COMPATIBLE" in s and "NThr:1" in s for s in sgemms), sgemms


def test_off_by_default_leaves_every_library_alone(tmp_path):
    report, log = _probe(_write_params(tmp_path, strict_on=False))
    assert not report["on"] and not report["active"]
    assert report["deterministic"] is False and report["mkldnn"] is True and len(_onednn_convolutions(log)) == 1
    (sgemm,) = _verbose(log, "MKL_VERBOSE SGEMM")
    assert "CNR:OFF" in sgemm, sgemm
    assert "strict mode" not in log


def test_the_full_profile_is_exempt_and_says_so(tmp_path):
    report, log = _probe(_write_params(tmp_path, strict_on=True, profile="full"))
    assert not report["on"] and report["deterministic"] is False
    assert "strict mode: off for the full profile" in log
    report, log = _probe(_write_params(tmp_path, strict_on=True), profile="full")  # `squeezegen <stage> --profile full`
    assert not report["on"] and "off for the full profile" in log


def test_too_late_says_so_and_bad_values_are_clear_errors(tmp_path, monkeypatch, capsys):
    params = _write_params(tmp_path, strict_on=True)
    monkeypatch.delenv(strict.ENV, raising=False)
    import torch  # noqa: F401  (this test process has loaded torch already)

    if platform.machine().lower() in ("x86_64", "amd64") and strict.cpu_has_avx2():
        before = dict(os.environ)
        assert strict.apply(params) is False and dict(os.environ) == before and not strict.active()
        assert "strict mode: off for this run: numpy and torch loaded before it could pin them" in capsys.readouterr().err
    monkeypatch.setenv(strict.ENV, "yes")
    with pytest.raises(UserError, match="SQUEEZEGEN_STRICT='yes': set it to 1"):
        strict.apply(params)
    monkeypatch.setenv(strict.ENV, "0")
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu sse sse2 avx fma\n")
    assert not strict.cpu_has_avx2(tmp_path / "cpuinfo")
    monkeypatch.setattr(strict, "cpu_has_avx2", lambda: False)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    with pytest.raises(UserError, match="AVX2, which this CPU lacks"):
        strict.apply(params)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(UserError, match="this machine is aarch64"):
        strict.apply(params)
    assert not strict.requested(tmp_path / "missing.yaml")


def test_stage_scripts_apply_it_first():
    """Every stage script goes through run_stage_script, which applies strict mode before it
    imports the stage module; so does each `squeezegen <stage>` command."""
    source = (ROOT / "src/squeezegen/stages/__init__.py").read_text()
    assert source.index("strict.apply()") < source.index("importlib.import_module")
    cli = (ROOT / "src/squeezegen/cli.py").read_text()
    assert cli.index("strict.apply(params, profile)") < cli.index('importlib.import_module(f"squeezegen.stages.{stage}")')
    for script in sorted((ROOT / "stages").glob("*.py")):
        assert f'run_stage_script("{script.stem}")' in script.read_text(), script
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, stage in spec["stages"].items():
        whole_file = {"params.yaml": None} in stage["params"]  # check_params tracks every key, repro included
        assert whole_file or "repro" in stage["params"], f"stage {name}: strict mode changes its outputs, so it must list the repro params"
