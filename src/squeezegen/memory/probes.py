"""Memory probes: the peak memory of a block of code on CUDA or the CPU, and of a whole stage.

On CUDA the caching allocator keeps exact counters: `reset_peak_memory_stats()` before, then
`max_memory_allocated()` (bytes held by live tensors at the worst moment) and
`max_memory_reserved()` (what the allocator took from the driver, fragmentation included).

On the CPU no allocator keeps such counters, so the probe reads the kernel's: `VmHWM`, the
process's peak resident set, is reset to the current RSS by writing "5" to
`/proc/self/clear_refs` (Linux ≥ 4.0). Where that write is not permitted (some containers,
non-Linux), the probe falls back to sampling `VmRSS` on a thread every few milliseconds (which
may miss a spike shorter than the interval) and says so in `PeakMemory.method`. The peak RSS is
a whole-process number (Python, libraries, allocator slack): `accounting.component_bytes` gives
the exact bytes of the tensors each pipeline component keeps resident.

Probes reset the counters, so a stage that measures a phase (training, a sample grid) would lose
what came before; each reset first folds the peak so far into a per-device high-water mark, and
`stage_peak_bytes` (since `reset_stage_peak`) reports the whole stage however many phases it measured.
"""

from __future__ import annotations

import contextlib
import gc
import platform
import re
import resource
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
SAMPLE_INTERVAL_S = 0.002  # RSS sampling period of the fallback probe


def _status_bytes(key: str) -> int | None:
    """A `kB` line of /proc/self/status (VmRSS, VmHWM) in bytes, or None where there is none."""
    try:
        match = re.search(rf"^{key}:\s+(\d+)\s+kB", PROC_STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def current_rss() -> int | None:
    """Resident set size of this process in bytes (None off Linux)."""
    return _status_bytes("VmRSS")


def peak_rss() -> int | None:
    """Peak resident set size (VmHWM) in bytes since start or the last reset (None off Linux)."""
    return _status_bytes("VmHWM")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not permit it."""
    try:
        with open(PROC_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class _RSSSampler:
    """Fallback when VmHWM cannot be reset: the highest VmRSS seen by a polling thread."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.peak = current_rss() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        self.peak = max(self.peak, current_rss() or 0)

    def __enter__(self) -> "_RSSSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sample()  # the final state counts too
        self._stop.set()
        self._thread.join()


def device_name(device: str | torch.device) -> str:
    """A human-readable name of the device numbers were measured on."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine() or "cpu"
    with contextlib.suppress(OSError):  # platform.processor() is often empty on Linux
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        if match:
            cpu = match.group(1).strip()
    return f"cpu: {cpu}"


@dataclass
class PeakMemory:
    """What `measure_peak` saw. Bytes everywhere; None where the number does not exist.

    peak_allocated / peak_reserved: CUDA allocator peaks during the block (None on CPU).
    start_allocated: CUDA bytes allocated when the block began (resident weights, say).
    peak_rss / start_rss: process resident set at its peak during the block and at its start
        (on CUDA too: a CPU-side VAE shows up here).
    method: how the RSS peak was obtained ("vmhwm-reset", "rss-sampled: ..." or "unavailable").
    """

    device: str
    device_name: str
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    start_allocated: int | None = None
    peak_rss: int | None = None
    start_rss: int | None = None
    method: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def peak_bytes(self) -> int:
        """The headline number: peak allocated on CUDA, peak RSS on the CPU."""
        value = self.peak_allocated if self.peak_allocated is not None else self.peak_rss
        return int(value or 0)

    @property
    def peak_delta(self) -> int:
        """How much the block added on top of what was there when it began."""
        if self.peak_allocated is not None:
            return self.peak_allocated - (self.start_allocated or 0)
        return (self.peak_rss or 0) - (self.start_rss or 0)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready), with peak_bytes and peak_delta added."""
        out = asdict(self)
        out.update(peak_bytes=self.peak_bytes, peak_delta=self.peak_delta)
        return out


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def measure_peak(device: str | torch.device = "cpu") -> Iterator[PeakMemory]:
    """Measure peak memory of the `with` block; the yielded PeakMemory is filled in on exit.

    CUDA: allocator peaks are reset on entry (after a synchronize) and read on exit. Always:
    the process's peak RSS over the block (VmHWM after a reset, else sampled; see module doc).
    Nothing is freed or collected here: call `free_memory()` first for a clean start. Probes do
    not nest: an inner probe resets the counters an outer one is reading.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    result = PeakMemory(device=str(device), device_name=device_name(device))
    _synchronize(device)
    _fold(device)  # the peak so far survives the resets below (see `stage_peak_bytes`)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        result.start_allocated = torch.cuda.memory_allocated(device)

    result.start_rss = current_rss()
    if result.start_rss is None:
        result.method = "unavailable: no /proc/self/status"
        rss_probe: contextlib.AbstractContextManager = contextlib.nullcontext()
    elif reset_peak_rss():
        result.method = "vmhwm-reset"
        rss_probe = contextlib.nullcontext()
    else:
        result.method = (
            f"rss-sampled: /proc/self/clear_refs not writable here, VmRSS polled every "
            f"{SAMPLE_INTERVAL_S * 1e3:g} ms (spikes shorter than that can be missed)"
        )
        rss_probe = _RSSSampler()

    with rss_probe as sampler:
        try:
            yield result
        finally:
            _synchronize(device)
            if device.type == "cuda":
                result.peak_allocated = torch.cuda.max_memory_allocated(device)
                result.peak_reserved = torch.cuda.max_memory_reserved(device)
            if isinstance(sampler, _RSSSampler):
                sampler.sample()
                result.peak_rss = sampler.peak
            elif result.start_rss is not None:
                result.peak_rss = peak_rss()


_high_water: dict[str, int] = {}  # device → highest peak read before the counters were last reset


def as_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _counter_peak(device: torch.device) -> int:
    """The device's own peak counter: CUDA max allocated, else VmHWM (else the rusage maximum)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    hwm = peak_rss()
    return hwm if hwm is not None else int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _fold(device: str | torch.device) -> None:
    device = as_device(device)
    _high_water[str(device)] = max(_high_water.get(str(device), 0), _counter_peak(device))


def reset_stage_peak(device: str | torch.device = "cpu") -> None:
    """Start a stage's memory window: forget earlier peaks and reset the counters to now."""
    device = as_device(device)
    _high_water.pop(str(device), None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def stage_peak_bytes(device: str | torch.device = "cpu") -> int:
    """Peak memory since `reset_stage_peak` (or process start), across every `measure_peak` in
    between: CUDA bytes allocated by tensors, or the CPU process's peak RSS."""
    device = as_device(device)
    _synchronize(device)
    return max(_high_water.get(str(device), 0), _counter_peak(device))


def free_memory(device: str | torch.device | None = None) -> None:
    """Collect garbage and give cached CUDA blocks back, so the next measurement starts clean."""
    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
