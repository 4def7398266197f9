"""Will it fit: before a heavy stage starts, compare an estimate of what it will need with what
the machine has free, and stop with the knob to lower instead of letting the kernel's
out-of-memory killer end the run hours in.

`activation_bytes_per_sample` makes the estimate cheap: it runs the model on the meta device (no
memory, no arithmetic) and sums what autograd saves for the backward pass.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from squeezegen.memory.probes import as_device

PROC_MEMINFO = Path("/proc/meminfo")
CGROUP_DIR = Path("/sys/fs/cgroup")  # cgroup v2: a container's own limit may be far below the host's RAM
SKIP_CHECK_ENV = "SQUEEZEGEN_SKIP_MEMORY_CHECK"  # =1: run even when the estimate says it will not fit
# Saved activations × this ≈ what training holds for them at its worst (the backward pass's own
# buffers, kernels' workspace). Calibrated on SD 1.5 LoRA: H100, 512 px, batch 4, fp16 (6.44 GiB
# measured, 6.3 estimated) and the 2-core CPU, 256 px, batch 4, fp32 (6.08 GiB, 6.2 estimated).
ACTIVATION_SLACK = 1.25


def available_bytes(device: str | torch.device = "cpu") -> int | None:
    """Memory a new allocation can still get: free CUDA memory, or MemAvailable capped by the
    cgroup (container) limit; None where the system does not say."""
    device = as_device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        match = re.search(r"^MemAvailable:\s+(\d+)\s+kB", PROC_MEMINFO.read_text(), re.MULTILINE)
    except OSError:
        return None
    free = int(match.group(1)) * 1024 if match else None
    with contextlib.suppress(OSError, ValueError):
        limit = (CGROUP_DIR / "memory.max").read_text().strip()
        if limit != "max":
            in_group = int(limit) - int((CGROUP_DIR / "memory.current").read_text())
            free = in_group if free is None else min(free, in_group)
    return free


def check_memory(need_bytes: int, device: str | torch.device, *, what: str, knobs: Sequence[str]) -> None:
    """UserError when `need_bytes` (an estimate) exceeds the memory free on `device`, naming the
    `knobs` that lower it. `SQUEEZEGEN_SKIP_MEMORY_CHECK=1` turns the check off."""
    from squeezegen.errors import UserError

    free = available_bytes(device)
    if free is None or os.environ.get(SKIP_CHECK_ENV) == "1" or need_bytes <= free:
        return
    kind = "GPU memory" if torch.device(device).type == "cuda" else "RAM"
    raise UserError(
        f"{what} needs an estimated {need_bytes / 2**30:.1f} GiB of {kind}, {free / 2**30:.1f} GiB is free. "
        f"Lower {' or '.join(knobs)} (e.g. `dvc exp run -S <key>=<smaller>`), free memory, or use a larger "
        f"machine; {SKIP_CHECK_ENV}=1 runs anyway."
    )


class _FusedAttentionSaves(torch.autograd.Function):
    """Stands in for a fused attention kernel's backward record: q, k, v and the output, never the
    (tokens × tokens) attention matrix that the meta device's reference path would save."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, k, v, out)
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:  # never run: estimates only go forward
        raise NotImplementedError


@contextlib.contextmanager
def _fused_attention() -> Iterator[None]:
    """On meta tensors `scaled_dot_product_attention` takes the math path, which saves the attention
    matrix (1 GiB per SD 1.5 layer at 512 px); CPU and CUDA runs use fused kernels that do not."""
    import torch.nn.functional as F

    real = F.scaled_dot_product_attention

    def fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.no_grad():
            out = real(q, k, v, *args, **kwargs)
        return _FusedAttentionSaves.apply(q, k, v, out)

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = real


def activation_bytes_per_sample(forward: Callable[[int], Any]) -> int:
    """Bytes autograd keeps for the backward pass per sample, from `forward(batch)` run on meta tensors.

    `forward(b)` must build its inputs on the meta device with batch size `b` and run the model
    (also on meta) with gradients on. The difference between batch 2 and batch 1 cancels what
    does not grow with the batch (weights saved for the backward pass). Attention counts as a
    fused kernel saves it. The result includes `ACTIVATION_SLACK` for the backward pass's buffers.
    """
    def saved(batch: int) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad(), _fused_attention():
            forward(batch)
        return total

    return int(max(saved(2) - saved(1), 0) * ACTIVATION_SLACK)
