"""The benchmark, rendered: its markdown table, memory and frontier charts, sample strip and memory CSV."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from squeezegen.formatting import fmt_mib, fmt_num
from squeezegen.sd.benchmark import REFERENCE
from squeezegen.sd.configurations import (
    OFFLOAD_PLACEMENTS,
)


def _threads(summary: dict) -> int | None:
    """The intra-op thread count the configurations ran on (the same for all of a run)."""
    return next((summary[n]["threads"] for n in summary["configs"] if summary[n].get("threads")), None)


def measured(summary: dict[str, Any]) -> list[str]:
    """The configurations that ran (not skipped), in order."""
    return [n for n in summary["configs"] if "skipped" not in summary[n]]


def _how(m: dict[str, Any]) -> str:
    """placement · CFG · attention, in a few words."""
    parts = [m.get("placement", "resident")]
    if m.get("text_encoder_on") == "cpu":
        parts.append("text encoder on CPU")
    parts += [f"CFG {m.get('cfg', 'batch')}", m.get("attention", "sdpa")]
    if m.get("vae_tile_px"):
        parts.append(f"VAE tiles {m['vae_tile_px']} px")
    if m.get("cuda_graph_stats"):
        parts.append("UNet step in a CUDA graph")
    elif m.get("cuda_graph"):
        parts.append("CUDA graph asked for, none on this device")
    return ", ".join(parts)


def memory_table(summary: dict[str, Any], lpips_name: str = "lpips") -> str:
    """The benchmark as a markdown table (MiB = 2^20 bytes); skipped configurations say why."""
    cuda = summary["device_type"] == "cuda"
    peak_label = "peak allocated (MiB)" if cuda else "peak RSS (MiB)"
    head = [
        "configuration", "how", "computes in", "VAE on", peak_label, "vs fp16", "peak reserved (MiB)" if cuda else "RSS above start (MiB)",
        "weights resident (MiB)", *(["weights on GPU (MiB)"] if cuda else []), "s / image",
        "PSNR vs fp16 (dB)", f"{lpips_name} vs fp16",
    ]
    lines = [
        f"Device: {summary['device']} · arch: {summary['arch']} · {summary['settings']['size']} px, "
        f"{summary['settings']['steps']} steps, guidance {summary['settings']['guidance']}, batch 1"
        + (f" · Q4_K decode: {summary['q4k_decoder']}" if summary.get("q4k_decoder") else "")
        + (f" · {threads} CPU threads" if (threads := _threads(summary)) else ""),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name in summary["configs"]:
        m = summary[name]
        if "skipped" in m:
            lines.append("| " + " | ".join([f"`{name}`", _how(m), "—", "—", f"skipped: {m['skipped']}", *["—"] * (len(head) - 5)]) + " |")
            continue
        row = [
            f"`{name}`",
            _how(m),
            m.get("compute_dtype", "—"),
            m.get("vae_device", "—"),
            fmt_mib(m["peak_bytes"]),
            fmt_num(m["peak_mem_ratio"], ".2f"),
            fmt_mib(m["peak_reserved"] if cuda else m.get("peak_rss_above_baseline")),
            fmt_mib(m["weights_bytes"]),
            *([fmt_mib(m.get("device_weights_bytes"))] if cuda else []),
            fmt_num(m["seconds_per_image"], ".2f"),
            fmt_num(m.get("psnr"), ".1f"),
            fmt_num(m.get(lpips_name), ".3f"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    ref = summary.get(REFERENCE, {})
    if "psnr_other_seed" in ref:
        lines += ["", f"Scale: two fp16 images of the same prompt with different seeds differ by "
                      f"PSNR {ref['psnr_other_seed']:.1f} dB."]
    kernels = {n: summary[n].get("sdpa_kernels") for n in measured(summary) if summary[n].get("sdpa_kernels") is not None}
    if kernels:
        lines += ["", "Attention kernels picked by PyTorch per `scaled_dot_product_attention` call (one image): "
                  + "; ".join(f"`{n}` " + (", ".join(f"{k} ×{v}" for k, v in counts.items()) or "none (sliced attention)")
                              for n, counts in kernels.items()) + "."]
    notes = sorted({note for n in measured(summary) for note in summary[n].get("notes") or []})
    lines += ["", *(f"Note: {note}." for note in notes)] if notes else []
    if not cuda:
        lines += ["", "CPU: peak RSS is the whole process (Python and libraries included; "
                      f"measured with {summary[measured(summary)[0]]['rss_method']}); weights resident are exact tensor bytes."]
    return "\n".join(lines) + "\n"


def memory_chart(summary: dict[str, Any], path: str) -> None:
    """Grouped bars per configuration: peak memory (+ reserved on CUDA) and resident weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = measured(summary)
    cuda = summary["device_type"] == "cuda"
    series = [("peak allocated" if cuda else "peak RSS", [summary[n]["peak_bytes"] for n in names])]
    if cuda:
        series.append(("peak reserved", [summary[n]["peak_reserved"] or 0 for n in names]))
    series.append(("weights resident", [summary[n]["weights_bytes"] for n in names]))
    x = np.arange(len(names))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(2.2 * len(names) + 2, 4.5))
    for i, (label, values) in enumerate(series):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, np.array(values) / 2**20, width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    labels = [_label(n) for n in names]
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("MiB")
    ax.set_title(f"{summary['arch']} · {summary['settings']['size']} px · {summary['device']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _label(name: str) -> str:
    return (name.replace("_int8_clip", "\n+ int8 clip").replace("_cpu_vae", "\n+ cpu vae").replace("_tiled_vae", "\n+ tiled vae")
            .replace("_offload", "\noffload").replace("lean_", "lean\n").replace("_cuda_graph", "\n+ cuda graph"))


def frontier_chart(summary: dict[str, Any], path: str) -> None:
    """Peak memory (x) against seconds per image (y), one labelled point per configuration; skipped
    configurations are listed under the plot with their reason. Lower left is better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = measured(summary)
    cuda = summary["device_type"] == "cuda"
    x = np.array([summary[n]["peak_bytes"] for n in names], dtype=float) / 2**20
    y = np.array([summary[n]["seconds_per_image"] for n in names], dtype=float)
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    ours = [n for n in names if summary[n].get("placement") not in OFFLOAD_PLACEMENTS]
    for group, marker, label in ((ours, "o", "squeezegen configurations"),
                                 ([n for n in names if n not in ours], "s", "diffusers' offloading (peers)")):
        idx = [names.index(n) for n in group]
        if idx:
            ax.scatter(x[idx], y[idx], marker=marker, s=46, label=label)
    for xi, yi, name in zip(x, y, names):
        ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlabel(("peak allocated" if cuda else "peak RSS (whole process)") + " (MiB)")
    ax.set_ylabel("seconds per image")
    ax.set_title(f"{summary['arch']} · {summary['settings']['size']} px · {summary['settings']['steps']} steps · "
                 f"{summary['device']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    skipped = summary.get("skipped") or {}
    if skipped:
        fig.text(0.01, 0.01, "\n".join(f"skipped {n}: {r[:110]}" for n, r in skipped.items()), fontsize=6, va="bottom")
    fig.tight_layout(rect=(0, 0.04 * len(skipped), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def samples_strip(images: dict[str, list[bytes]], path: str, *, index: int = 1) -> None:
    """One image per configuration (the first timed one), side by side, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = {name: pngs for name, pngs in images.items() if pngs}  # skipped configurations drew nothing
    fig, axes = plt.subplots(1, len(images), figsize=(2.6 * len(images), 3.0), squeeze=False)
    for ax, (name, pngs) in zip(axes[0], images.items()):
        ax.imshow(Image.open(io.BytesIO(pngs[min(index, len(pngs) - 1)])).convert("RGB"))
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def memory_csv(summary: dict[str, Any]) -> str:
    """`config,peak_bytes,weights_bytes` rows for the DVC bar plot."""
    rows = ["config,peak_bytes,weights_bytes"]
    rows += [f"{n},{summary[n]['peak_bytes']},{summary[n]['weights_bytes']}" for n in measured(summary)]
    return "\n".join(rows) + "\n"
