"""Run a module's forward as a replayed CUDA graph: the UNet step without per-layer launch costs.

A dequantize-in-forward UNet launches, per layer, a decode kernel and then the matmul or conv, and
every launch is Python and driver work on the CPU. At 512 px on a fast GPU the kernels can finish
sooner than the CPU issues them: then launches, not arithmetic, set the step time (the decode
reads 0.5 GB and writes 1.7 GB per step, about a millisecond of an H100's bandwidth). A CUDA
graph records the whole step once and replays it with one launch.

`enable_cuda_graph(unet)` wraps `unet.forward` in place (so diffusers' pipelines, serial CFG and
accelerate hooks layered on top keep working) and returns the `CUDAGraphForward`:

- the first call with a new input signature — tensor shapes / dtypes / devices and the values
  of the non-tensor arguments — warms up on a side stream, captures a graph and keeps static
  input buffers; later calls copy their inputs in and replay. Outputs are cloned out of the
  graph's buffers, so two calls in a row (serial CFG) never overwrite each other;
- the weights' addresses are part of the signature: a module moved by `.to()` or by phase
  residency re-captures instead of replaying stale pointers;
- `release()` drops the graph and its memory pool (phase residency calls it when the UNet leaves
  the device, so the decode phase does not carry the UNet's activations);
- calls it cannot capture (tensors nested in dicts or lists, e.g. ControlNet residuals) run
  eagerly and are counted; with `on_error="eager"` a capture that fails is recorded
  (`stats.error`) and the module runs eagerly from then on, so a benchmark still gets its figures.

PyTorch's own recipe (torch.cuda.graph, "whole network capture") is followed; what no library
provides is the part around it: signature keying, weight tracking and release for a diffusers
module, hence this file. On a CPU there is nothing to capture: `enable_cuda_graph` refuses, and
the benchmark configurations that ask for a graph run eagerly with a note.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Protocol

import torch
from accelerate.utils import recursively_apply
from torch import nn

from squeezegen.sd.residency import weight_slots

_CONSTANTS = (type(None), bool, int, float, str)


class GraphBackend(Protocol):
    """How a step is recorded and replayed. `capture(fn, warmup)` returns (replay, outputs): calling
    `replay()` recomputes fn's outputs into the very tensors `outputs` holds."""

    def capture(self, fn: Callable[[], Any], warmup: int) -> tuple[Callable[[], None], Any]: ...


class CudaGraphBackend:
    """torch.cuda.CUDAGraph: warm-up on a side stream, then capture (PyTorch's documented recipe)."""

    def capture(self, fn: Callable[[], Any], warmup: int) -> tuple[Callable[[], None], Any]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # lazy inits (cuBLAS handles, autotuning) must not happen in capture
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = fn()
        return graph.replay, outputs


@dataclasses.dataclass
class GraphStats:
    captures: int = 0  # graphs recorded (one per new signature or weight placement)
    replays: int = 0  # calls served by a replay
    eager_calls: int = 0  # calls that could not be captured and ran as usual
    releases: int = 0  # graphs dropped by release()
    error: str | None = None  # why capturing failed (on_error="eager"); every later call runs eagerly

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class CUDAGraphForward:
    """A module's forward served from captured graphs; see the module docstring."""

    def __init__(
        self, module: nn.Module, *, warmup: int = 1, backend: GraphBackend | None = None, on_error: str = "raise"
    ) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (cuBLAS and friends initialise on first use), got {warmup}")
        if on_error not in ("raise", "eager"):
            raise ValueError(f"on_error must be 'raise' or 'eager', got {on_error!r}")
        self.module, self.warmup, self.on_error = module, warmup, on_error
        self.backend = backend if backend is not None else CudaGraphBackend()
        self.forward = module.forward  # the eager forward (bound method, or a wrapper already installed)
        # (owner, name, is_parameter) of every weight: their addresses key the graph, and a slot
        # list is cheaper to read per call than walking the module tree.
        self._slots = [(owner, name, is_param) for owner, name, is_param, _ in weight_slots(module)]
        self.stats = GraphStats()
        self._key: tuple | None = None
        self._inputs: dict[Any, torch.Tensor] = {}
        self._replay: Callable[[], None] | None = None
        self._outputs: Any = None

    def _weights_key(self) -> tuple[int, ...]:
        return tuple(
            (m._parameters[n] if is_param else m._buffers[n]).data_ptr() for m, n, is_param in self._slots
        )

    def _signature(self, args: tuple, kwargs: dict) -> tuple | None:
        """Hashable description of one call, or None where it cannot be captured."""
        parts = []
        for where, value in [*enumerate(args), *sorted(kwargs.items())]:
            if isinstance(value, torch.Tensor):
                parts.append((where, "tensor", tuple(value.shape), value.dtype, value.device))
            elif isinstance(value, _CONSTANTS):
                parts.append((where, "value", value))
            else:
                return None
        return tuple(parts)

    def release(self) -> None:
        """Drop the graph, its static buffers and memory pool; the next call captures anew."""
        if self._replay is not None:
            self.stats.releases += 1
        self._key, self._inputs, self._replay, self._outputs = None, {}, None, None

    def _capture(self, key: tuple, args: tuple, kwargs: dict) -> None:
        self.release()
        statics = {where: value.clone() for where, value in [*enumerate(args), *kwargs.items()] if isinstance(value, torch.Tensor)}
        static_args = tuple(statics.get(i, a) for i, a in enumerate(args))
        static_kwargs = {k: statics.get(k, v) for k, v in kwargs.items()}
        run = functools.partial(self.forward, *static_args, **static_kwargs)
        self._replay, self._outputs = self.backend.capture(run, self.warmup)
        self._key, self._inputs = key, statics
        self.stats.captures += 1

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        signature = None if self.stats.error else self._signature(args, kwargs)
        if signature is None:
            self.stats.eager_calls += 1
            return self.forward(*args, **kwargs)
        key = (signature, self._weights_key())
        if key != self._key:
            try:
                self._capture(key, args, kwargs)  # static buffers start as copies of this call's inputs
            except Exception as err:
                if self.on_error == "raise":
                    raise
                self.release()
                self.stats.error = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                self.stats.eager_calls += 1
                return self.forward(*args, **kwargs)
        else:
            for where, value in [*enumerate(args), *kwargs.items()]:
                if isinstance(value, torch.Tensor):
                    self._inputs[where].copy_(value)
        self._replay()
        self.stats.replays += 1
        # every tensor cloned out of the graph's static buffers (tuples, diffusers' BaseOutput, ...)
        return recursively_apply(torch.Tensor.clone, self._outputs)


def enable_cuda_graph(
    module: nn.Module, *, warmup: int = 1, backend: GraphBackend | None = None, on_error: str = "raise"
) -> CUDAGraphForward:
    """Serve `module`'s forward from CUDA graphs (in place); returns the wrapper (stats, release).

    The module's weights must be on a CUDA device when it is called; with the default backend,
    CUDA must be available. Install it before wrappers that split calls (serial CFG) and before
    hooks that move weights (phase residency, offloading), so the graph records the innermost step.
    """
    if backend is None and not torch.cuda.is_available():
        raise RuntimeError("CUDA graphs need a CUDA device; this machine has none (run the module eagerly)")
    graphed = CUDAGraphForward(module, warmup=warmup, backend=backend, on_error=on_error)
    module.forward = functools.update_wrapper(lambda *a, **k: graphed(*a, **k), graphed.forward)
    module.cuda_graph = graphed  # the wrapper (stats, release) for whoever holds only the module
    return graphed
