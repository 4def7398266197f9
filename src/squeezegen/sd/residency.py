"""Phase residency: each component of a diffusers pipeline sits on the compute device only while it runs.

A text-to-image pipeline runs its parts one after the other — text encoder (encode), UNet
(denoise, many calls), VAE (decode) — so its peak need only be the largest phase, not the sum of
all components. `enable_phase_residency(pipe, "cuda")` attaches an accelerate `ModelHook` to each
component (the mechanism diffusers' own `enable_model_cpu_offload` uses, so `pipe(...)`, the VAE's
`decode` and `pipe._execution_device` work unchanged): when a component is called, every other
managed component leaves the device and this one arrives.

What differs from `enable_model_cpu_offload`:
- each weight has one CPU copy, pinned on CUDA, made once; a component arrives with non-blocking
  copies from it and leaves by dropping its device tensors (inference never writes weights), so
  leaving costs no copy at all;
- components named in `run_on_cpu` never move: they run on the CPU (e.g. an 8-bit text encoder
  whose one call per image is cheaper there than its transfer), their inputs are moved to the CPU
  and their outputs back to the compute device;
- a `ResidencyTrace` records, per phase entered, which components the schedule holds on the
  device and where each one's weights actually are — the schedule as it ran, not as intended.

bitsandbytes 8-bit layers keep quantization state beside their weights, so a component that
contains them moves with its own `.to()` (bitsandbytes moves that state) instead of the pinned copy.
On a CPU run (compute device = CPU) nothing moves, but the schedule is still recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

PHASE_OF = {"text_encoder": "encode", "unet": "denoise", "vae": "decode"}  # SD components → phase names
DEFAULT_COMPONENTS = ("text_encoder", "unet", "vae")


@dataclass
class ResidencyTrace:
    """One event per phase entered: {phase, component, on_device (the schedule), placement (where each
    managed component's first weight really is), runs_on, calls, moved_bytes, move_seconds}."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def schedule(self) -> list[tuple[str, tuple[str, ...]]]:
        """(phase, components on the compute device) per event, in order."""
        return [(e["phase"], tuple(e["on_device"])) for e in self.events]

    def clear(self) -> None:
        self.events.clear()

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self.events]


def weight_slots(module: nn.Module) -> list[tuple[nn.Module, str, bool, torch.Tensor]]:
    """(owner, name, is_parameter, tensor) for every parameter and buffer, tied ones once per owner."""
    out = []
    for owner in module.modules():
        out += [(owner, name, True, t) for name, t in owner._parameters.items() if t is not None]
        out += [(owner, name, False, t) for name, t in owner._buffers.items() if t is not None]
    return out


def _moves_with_to(module: nn.Module) -> bool:
    """bitsandbytes 8-bit layers keep state (CB/SCB) outside their weights: only `.to()` moves it."""
    return any(type(m).__name__ in ("Linear8bitLt", "Linear4bit") for m in module.modules())


class _Component:
    """One managed component: its CPU copies and how it moves.

    Weights are swapped by re-registering each parameter / buffer slot (as accelerate does), not by
    assigning `.data`, so any device works — the meta device included, which the tests use.
    """

    def __init__(self, name: str, module: nn.Module, device: torch.device, *, stays_on_cpu: bool, pin: bool) -> None:
        self.name, self.module, self.device, self.stays_on_cpu = name, module, device, stays_on_cpu
        self.with_to = _moves_with_to(module)
        slots = weight_slots(module)
        index: dict[int, int] = {}  # id(tensor) → copy number: a tied weight is copied (and moved) once
        self.slots = [(owner, name_, is_param, index.setdefault(id(t), len(index))) for owner, name_, is_param, t in slots]
        firsts = list({id(t): t for *_, t in slots}.values())
        self.nbytes = sum(t.numel() * t.element_size() for t in firsts)
        self.copies: list[torch.Tensor] = []
        if self.with_to or stays_on_cpu:
            module.to("cpu")
        else:  # one CPU copy per weight, made once; the module now points at it
            for t in firsts:
                copy = t.detach().to("cpu")
                self.copies.append(copy.pin_memory() if pin and not copy.is_pinned() else copy)
            self._point_at(self.copies)

    def _point_at(self, tensors: list[torch.Tensor]) -> None:
        for owner, name, is_param, i in self.slots:
            if is_param:
                owner._parameters[name] = nn.Parameter(tensors[i], requires_grad=False)
            else:
                owner._buffers[name] = tensors[i]

    def where(self) -> str:
        first = next(iter(self.module.parameters()), None) if self.slots else None
        return str(first.device) if first is not None else "none"

    def onload(self) -> int:
        """Move to the compute device; returns the bytes copied (0 where nothing moves)."""
        if self.stays_on_cpu or self.device.type == "cpu":
            return 0
        if self.with_to:
            self.module.to(self.device)
        else:
            self._point_at([copy.to(self.device, non_blocking=True) for copy in self.copies])
        return self.nbytes

    def offload(self) -> None:
        if self.stays_on_cpu or self.device.type == "cpu":
            return
        if self.with_to:
            self.module.to("cpu")
        else:
            self._point_at(self.copies)  # the device tensors are freed; weights were never written


class PhaseResidency:
    """The schedule: at most one managed component (the running one) on the compute device."""

    def __init__(self, components: dict[str, _Component], device: torch.device) -> None:
        self.components, self.device = components, device
        self.trace = ResidencyTrace()
        self.active: str | None = None
        self._on_leave: dict[str, list[Callable[[], None]]] = {}

    def on_leave(self, name: str, callback: Callable[[], None]) -> None:
        """Call `callback` whenever `name`'s phase ends (before its weights leave the device), e.g. to
        drop a CUDA graph whose memory pool would otherwise stay through the next phase."""
        if name not in self.components:
            raise ValueError(f"phase residency manages {list(self.components)}, not {name!r}")
        self._on_leave.setdefault(name, []).append(callback)

    def _leave(self) -> None:
        """The active component's phase ends: run its callbacks."""
        if self.active is not None:
            for callback in self._on_leave.get(self.active, ()):
                callback()

    def activate(self, name: str) -> None:
        """Make `name` the running component (called by its hook before each call)."""
        if name == self.active:
            self.trace.events[-1]["calls"] += 1
            return
        start = time.perf_counter()
        self._leave()
        for other, comp in self.components.items():
            if other != name:
                comp.offload()
        moved = self.components[name].onload()
        self.active = name
        on_device = [] if self.components[name].stays_on_cpu else [name]
        self.trace.events.append({
            "phase": PHASE_OF.get(name, name),
            "component": name,
            "on_device": on_device,
            "placement": {n: c.where() for n, c in self.components.items()},
            "runs_on": "cpu" if self.components[name].stays_on_cpu else str(self.device),
            "calls": 1,
            "moved_bytes": moved,
            "move_seconds": time.perf_counter() - start,  # the copies are asynchronous: launch time on CUDA
        })

    def offload_all(self) -> None:
        """Every managed component back to the CPU (e.g. between images or before freeing)."""
        self._leave()
        for comp in self.components.values():
            comp.offload()
        self.active = None

    def remove(self, pipe: Any) -> None:
        """Detach the hooks; components stay where they are (on the CPU after `offload_all`)."""
        from accelerate.hooks import remove_hook_from_module

        for name in self.components:
            remove_hook_from_module(getattr(pipe, name))


def _make_hook(residency: PhaseResidency, name: str, execution_device: torch.device, stays_on_cpu: bool):
    from accelerate.hooks import ModelHook
    from accelerate.utils import send_to_device  # nested tensors (tuples, dicts, ModelOutputs) to a device

    class PhaseHook(ModelHook):
        """Before a call: this component's phase begins. A CPU-run component gets its inputs on the CPU
        and hands its outputs back on the compute device."""

        def __init__(self) -> None:
            self.execution_device = execution_device  # read by diffusers' pipe._execution_device

        def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
            residency.activate(name)
            if stays_on_cpu:
                return send_to_device(args, "cpu"), send_to_device(kwargs, "cpu")
            return args, kwargs

        def post_forward(self, module: nn.Module, output: Any) -> Any:
            return send_to_device(output, execution_device) if stays_on_cpu else output

    return PhaseHook()


def enable_phase_residency(
    pipe: Any,
    device: str | torch.device,
    *,
    components: Sequence[str] = DEFAULT_COMPONENTS,
    run_on_cpu: Iterable[str] = (),
    pin_memory: bool | None = None,
) -> PhaseResidency:
    """Keep each of `components` of a diffusers pipeline on `device` only during its own phase.

    Works on any pipeline whose components are attributes (`pipe.unet`, `pipe.vae`, ...); call it
    once, after the pipeline is built (components may be anywhere; they end up on the CPU). The
    pipeline is then used as usual. `run_on_cpu`: components that never move and run on the CPU.
    A CPU-run component keeps its own dtype: with diffusers' `encode_prompt`, prompt embeddings
    come out in the text encoder's dtype, so cast them to the UNet's (or pass `prompt_embeds`).
    `pin_memory` (default: on CUDA) pins the CPU copies so arrivals are asynchronous.
    Returns the PhaseResidency whose `.trace` records every phase.
    """
    from accelerate.hooks import add_hook_to_module

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    run_on_cpu = set(run_on_cpu)
    unknown = [n for n in (*components, *run_on_cpu) if not isinstance(getattr(pipe, n, None), nn.Module)]
    if unknown:
        raise ValueError(f"phase residency: the pipeline has no module components {unknown}")
    if not run_on_cpu <= set(components):
        raise ValueError(f"phase residency: run_on_cpu {sorted(run_on_cpu)} must be among components {list(components)}")
    pin = device.type == "cuda" if pin_memory is None else pin_memory
    managed = {
        name: _Component(name, getattr(pipe, name), device, stays_on_cpu=name in run_on_cpu, pin=pin)
        for name in components
    }
    residency = PhaseResidency(managed, device)
    for name in components:
        add_hook_to_module(getattr(pipe, name), _make_hook(residency, name, device, name in run_on_cpu))
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the device copies made before are gone; give their blocks back
    return residency
