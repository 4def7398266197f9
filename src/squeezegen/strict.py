"""Strict mode: CPU float results that do not depend on the machine, on any x86-64 CPU with AVX2.

On with `repro.strict: true` in params.yaml (what DVC tracks) or `SQUEEZEGEN_STRICT=1` (for runs
outside DVC). `apply()` is the first thing every stage script and `squeezegen <stage>` command
runs: the libraries read most of these settings when they load or first dispatch a kernel, so
they are set before numpy and torch are imported (this module imports neither at the top).

What differs between CPUs without it, and what pins it:
- the thread count splits every parallel reduction: a fixed intra-op count (`repro.threads`) for
  torch, OpenMP, MKL and OpenBLAS, with dynamic adjustment off;
- ATen's own vectorised kernels are built per ISA and picked at run time: held to AVX2;
- MKL (every fp32 matmul) picks kernels and blocking by CPU: its conditional numerical
  reproducibility, branch COMPATIBLE, the one branch MKL honours on both Intel and AMD CPUs
  (AVX2 falls back to AUTO on non-Intel CPUs, which differs between CPUs);
- oneDNN (torch's convolutions) sizes its blocking by the CPU's L2 cache and promises equal
  results only on the same CPU: off in torch by default (`repro.onednn: false`), so convolutions
  run as ATen im2col + MKL gemm (2.5-6x slower to train); `repro.onednn: true` keeps it, capped
  at AVX2 like anything else that reaches it (no AVX-512, AMX or bf16), at about 1.5x;
- NNPACK picks kernels by CPU: off; fp32 matmuls stay in full fp32 (no bf16 / TF32);
- numpy's AVX-512 kernels (SVML) round transcendental functions differently from its AVX2 and
  scalar ones: its X86_V4 targets are disabled; its OpenBLAS is held to the Haswell (AVX2) kernels;
- a GPU computes with other kernels altogether: GPUs are hidden, every stage runs on the CPU.
The full profile needs a GPU, so it is exempt and says so.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import yaml

from squeezegen.errors import UserError

ENV = "SQUEEZEGEN_STRICT"
DEFAULT_THREADS = 2  # the toy's reference machine (and CI) has 2 cores
GPU_PROFILES = ("full",)  # profiles that need a GPU, whose kernels strict mode cannot pin
ATEN_CAPABILITY = "avx2"  # ATen kernel build for Intel CPUs since Haswell (2013) and AMD since Excavator (2015)
ONEDNN_ISA = "AVX2"
MKL_BRANCH = "COMPATIBLE"  # SSE2 without the rcpps/rsqrtps approximations, which differ between vendors
NUMPY_DISABLED = "X86_V4 AVX512_ICL AVX512_SPR"  # numpy's dispatch targets above AVX2 (names of numpy ≥ 2.4)
OPENBLAS_CORE = "Haswell"
_LOADS_TOO_EARLY = ("numpy", "torch")  # read the variables below when they load


def pinned_env(threads: int) -> dict[str, str]:
    """The environment variables strict mode sets (before numpy and torch load)."""
    count = str(threads)
    return {
        ENV: "1",  # child processes (and `active()`) see strict mode too
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": count,
        "MKL_NUM_THREADS": count,
        "OPENBLAS_NUM_THREADS": count,
        "OMP_DYNAMIC": "FALSE",  # MKL's reproducibility conditions: no run-time change of the thread count
        "MKL_DYNAMIC": "FALSE",
        "ATEN_CPU_CAPABILITY": ATEN_CAPABILITY,
        "ONEDNN_MAX_CPU_ISA": ONEDNN_ISA,
        "MKL_CBWR": MKL_BRANCH,
        "NPY_DISABLE_CPU_FEATURES": NUMPY_DISABLED,
        "OPENBLAS_CORETYPE": OPENBLAS_CORE,
    }


def active() -> bool:
    """Whether strict mode is on for this process (set by `apply`, inherited by child processes).
    Code that could pick a faster, machine-dependent path (bf16 on CPUs with AMX) asks this first."""
    return os.environ.get(ENV) == "1"


def cpu_has_avx2(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU reports AVX2 (True where /proc/cpuinfo cannot be read: not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return True
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return "avx2" in flags.split()


def _read_params(path: Path) -> dict:
    """params.yaml's raw mapping, or {} when it is missing or unreadable (the stage's own config
    loading then reports that with its usual message)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


def requested(params: str | Path = "params.yaml") -> bool:
    """`SQUEEZEGEN_STRICT=1`, or `repro.strict: true` in `params`."""
    value = os.environ.get(ENV, "")
    if value not in ("", "0", "1"):
        raise UserError(f"{ENV}={value!r}: set it to 1 (strict mode on) or leave it unset (params.yaml's repro.strict decides)")
    repro = _read_params(Path(params)).get("repro")
    return value == "1" or (isinstance(repro, dict) and repro.get("strict") is True)


def apply(params: str | Path = "params.yaml", profile: str | None = None) -> bool:
    """Turn strict mode on for this process if it is requested; True when it is on.

    Must run before numpy or torch is imported (stage scripts run it first thing); called later,
    it says so and leaves the run unpinned. Imports torch itself at the end to set its run-time
    switches before any kernel runs.
    """
    if not requested(params):
        return False
    raw = _read_params(Path(params))
    chosen = profile if profile is not None else raw.get("profile", "toy")
    if chosen in GPU_PROFILES:
        print(f"strict mode: off for the {chosen} profile: it runs on a GPU, whose kernels cannot be pinned "
              "(strict mode covers the CPU-only toy profile)", file=sys.stderr)
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise UserError(f"strict mode pins x86-64 instruction sets (AVX2); this machine is {platform.machine()}: "
                        "set repro.strict: false (or unset SQUEEZEGEN_STRICT)")
    if not cpu_has_avx2():
        raise UserError("strict mode pins every kernel to AVX2, which this CPU lacks: set repro.strict: false "
                        "(or unset SQUEEZEGEN_STRICT)")
    loaded = [name for name in _LOADS_TOO_EARLY if name in sys.modules]
    if loaded:  # a stage called inside a process that already computes (a test, a notebook): it cannot be pinned
        print(f"strict mode: off for this run: {' and '.join(loaded)} loaded before it could pin them; run the stage "
              "as its own process (python stages/<stage>.py, squeezegen <stage>) for a strict run", file=sys.stderr)
        return False
    repro = raw.get("repro") if isinstance(raw.get("repro"), dict) else {}
    threads, onednn = repro.get("threads", DEFAULT_THREADS), repro.get("onednn", False)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"repro.threads: must be an integer >= 1, got {threads!r}")
    if not isinstance(onednn, bool):
        raise UserError(f"repro.onednn: must be true or false, got {onednn!r}")
    os.environ.update(pinned_env(threads))
    configure_torch(threads, onednn=onednn)
    print(f"strict mode: {threads} threads, ATen {ATEN_CAPABILITY}, MKL CNR {MKL_BRANCH}, "
          f"oneDNN {ONEDNN_ISA if onednn else 'off'}, CPU only", file=sys.stderr)
    return True


def configure_torch(threads: int, *, onednn: bool = False) -> None:
    """torch's run-time switches for strict mode (after `pinned_env` is in the environment)."""
    import torch

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = onednn  # off: convolutions through ATen + MKL CNR, not oneDNN's cache-sized blocking
    torch.backends.nnpack.set_flags(False)
    torch.set_float32_matmul_precision("highest")  # fp32 matmuls in fp32: no bf16 / TF32 shortcut
