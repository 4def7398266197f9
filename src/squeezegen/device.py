"""Where computation runs by default, and in which dtype a CPU computes."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import torch

CpuDtype = Literal["fp32", "bf16", "auto"]
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with native bf16 matmuls


def default_device() -> torch.device:
    """The first GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.cache
def cpu_has_bf16() -> bool:
    """True when the CPU reports AMX-BF16 or AVX512-BF16 (Linux's /proc/cpuinfo; elsewhere False)."""
    try:
        return cpuinfo_has_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def cpuinfo_has_bf16(cpuinfo: str) -> bool:
    """Whether a /proc/cpuinfo text lists a native bf16 matmul flag (BF16_CPU_FLAGS)."""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def cpu_compute_dtype(choice: CpuDtype) -> torch.dtype:
    """The dtype SD configurations compute in on a CPU: fp32, bf16, or auto = bf16 where the CPU
    has native bf16 matmuls (`cpu_has_bf16`), else fp32; in strict mode auto is fp32 (bf16
    kernels differ between CPUs)."""
    if choice == "fp32":
        return torch.float32
    if choice == "bf16":
        return torch.bfloat16
    if choice != "auto":
        raise ValueError(f"cpu dtype {choice!r}: choose fp32, bf16 or auto")
    from squeezegen import strict

    return torch.bfloat16 if cpu_has_bf16() and not strict.active() else torch.float32

