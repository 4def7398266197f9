"""Exact resident bytes: of tensors, of a module (by dtype and device), of each component of a diffusers pipeline."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn


def tensor_bytes(tensors: Iterator[torch.Tensor] | list[torch.Tensor]) -> int:
    """Bytes of distinct tensors (shared storage counted once), including bitsandbytes' int8
    row scales that hang off a weight as `.SCB` rather than being a parameter or buffer."""
    seen: set[tuple[int, int, str]] = set()
    total = 0
    for t in tensors:
        for part in (t, getattr(t, "SCB", None)):
            if not isinstance(part, torch.Tensor) or part.is_meta:
                continue
            key = (part.data_ptr(), part.numel(), str(part.device))
            if key in seen:
                continue
            seen.add(key)
            total += part.numel() * part.element_size()
    return total


def module_bytes(module: nn.Module) -> dict[str, Any]:
    """Exact resident bytes of one module: params + buffers (GGUF packed weights at their
    packed size), by dtype, and by the device they sit on."""
    tensors = [*module.parameters(), *module.buffers()]
    by_dtype: dict[str, int] = {}
    for t in tensors:
        name = str(t.dtype).removeprefix("torch.")
        by_dtype[name] = by_dtype.get(name, 0) + t.numel() * t.element_size()
    devices = sorted({str(t.device) for t in tensors})
    return {
        "bytes": tensor_bytes(tensors),
        "by_dtype": dict(sorted(by_dtype.items())),
        "devices": devices,
        "by_device": {d: tensor_bytes([t for t in tensors if str(t.device) == d]) for d in devices},
    }


def component_bytes(pipe: Any, extra: dict[str, nn.Module] | None = None) -> dict[str, dict[str, Any]]:
    """`module_bytes` for every nn.Module component of a diffusers pipeline (+ `extra` ones,
    e.g. a VAE held outside the pipeline), plus a `total` entry."""
    modules = {name: m for name, m in getattr(pipe, "components", {}).items() if isinstance(m, nn.Module)}
    modules.update({name: m for name, m in (extra or {}).items() if isinstance(m, nn.Module)})
    out = {name: module_bytes(m) for name, m in modules.items()}
    by_device: dict[str, int] = {}
    for entry in out.values():
        for device, n in entry["by_device"].items():
            by_device[device] = by_device.get(device, 0) + n
    out["total"] = {"bytes": sum(entry["bytes"] for entry in out.values()), "by_device": dict(sorted(by_device.items()))}
    return out
