"""The files under `metrics/`: one JSON per stage with machine-dependent figures under `perf`,
and the loss curves (CSV) that DVC plots.

Figures that depend on the machine's speed or load go under one `perf` key (`split_perf`), so
everything else is expected to be identical across clean runs on one machine and
`dvc metrics diff` between two such runs shows only `perf.*`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Collection, Mapping

from squeezegen.files import atomic_write_json, atomic_write_text

METRICS_DIR = Path("metrics")
PERF = "perf"
# Leaf names that measure time, speed or process memory (RSS): they vary with the machine's load;
# and `resumed_from_step`, which says what part of the run those timings cover.
_PERF_NAME = re.compile(r"seconds|per_s$|_per_s_|(^|_)rss(_|$)|throughput|speed|^resumed_from_step$")


# Memory peaks that are a CPU process's RSS (machine-dependent) but CUDA's exact allocated bytes.
PEAK_MEMORY_KEYS = frozenset({
    "peak_bytes", "load_peak_bytes", "peak_mem_bytes", "peak_mem_ratio",
    "peak_mem_bytes_fp16", "peak_mem_bytes_compressed", "peak_mem_bytes_train", "peak_mem_bytes_samples",
})


def memory_perf_keys(device_type: str) -> frozenset[str]:
    """`machine_dependent` keys for memory peaks measured on `device_type` ("cuda", "cpu", …)."""
    return frozenset() if device_type == "cuda" else PEAK_MEMORY_KEYS


def is_perf_name(key: str) -> bool:
    """Whether a metric's own name says it depends on speed or load (`seconds`, `steps_per_s`, `peak_rss`)."""
    return bool(_PERF_NAME.search(key))


def split_perf(metrics: Mapping[str, Any], machine_dependent: Collection[str] = ()) -> dict[str, Any]:
    """Move every speed/load figure into `metrics["perf"]`, keeping its nested path.

    A leaf goes to `perf` when `is_perf_name` says so or its name is in `machine_dependent`
    (e.g. `peak_bytes` when it is a CPU process's RSS rather than CUDA's exact allocated bytes).
    """
    perf: dict[str, Any] = dict(metrics.get(PERF, {}))

    def walk(node: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
        kept: dict[str, Any] = {}
        for key, value in node.items():
            if isinstance(value, Mapping):
                sub = walk(value, (*path, key))
                if sub or not value:
                    kept[key] = sub
            elif is_perf_name(key) or key in machine_dependent:
                target = perf
                for part in path:
                    target = target.setdefault(part, {})
                target[key] = value
            else:
                kept[key] = value
        return kept

    out = walk({k: v for k, v in metrics.items() if k != PERF}, ())
    if perf:
        out[PERF] = perf
    return out


def merge_perf(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `split_perf`: one nested dict with the `perf` figures back in place."""

    def merge(into: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
        for key, value in extra.items():
            if isinstance(value, Mapping) and isinstance(into.get(key), Mapping):
                into[key] = merge(dict(into[key]), value)
            else:
                into[key] = value
        return into

    rest = {k: v for k, v in metrics.items() if k != PERF}
    return merge(rest, metrics.get(PERF, {}))


def write_metrics_file(root: str | Path, name: str, metrics: Mapping[str, Any], *,
                       machine_dependent: Collection[str] = ()) -> tuple[Path, dict[str, Any]]:
    """Write `root/metrics/<name>.json` atomically with speed/load figures under `perf`
    (`split_perf`); returns the path and the dict written."""
    path = Path(root) / METRICS_DIR / f"{name}.json"
    metrics = split_perf(metrics, machine_dependent)
    atomic_write_json(path, metrics)
    return path, metrics


def write_history_csv(path: str | Path, history: list[dict[str, Any]], columns: list[str]) -> Path:
    """The training loop's per-step history as a CSV (for DVC plots), atomically; integers as
    they are, other numbers to 6 significant digits, missing values left empty."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        return str(value) if isinstance(value, int) else f"{value:.6g}"

    lines = [",".join(columns)] + [",".join(cell(entry.get(c)) for c in columns) for entry in history]
    return atomic_write_text(path, "\n".join(lines) + "\n")
