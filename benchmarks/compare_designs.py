"""The RQ generator's designs side by side, from DVC experiments' metrics: one markdown table.

    dvc exp run -n rq_transformer_equal -S rqvae.scales=equal -S prior.kind=rq_transformer
    python benchmarks/compare_designs.py HEAD workspace [--out benchmarks/results/generator_designs_toy.md]

Each source is a git revision (HEAD, a commit, an experiment's ref) or `workspace` (the files on
disk, where `dvc exp run` leaves its results). For each: the prior's kind and the RQ-VAE's levels,
its PSNR by levels, the prior's training time and val NLL, and evaluate's `gen.rq_prior` figures
with their 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from squeezegen.files import atomic_write_text  # noqa: E402

FIGURES = (("style_acc", "style acc", ".2f"), ("style_acc_vs_real", "× judge", ".2f"), ("genre_acc", "genre acc", ".2f"),
           ("score_control", "judged 80 − 30", "+.1f"), ("fd_judge", "fd_judge", ".1f"), ("fd_position", "fd_position", ".2f"))


def read_metrics(source: str, name: str) -> dict:
    """metrics/<name>.json at a git revision, or on disk for `workspace`."""
    if source == "workspace":
        return json.loads((ROOT / "metrics" / f"{name}.json").read_text())
    shown = subprocess.run(["git", "show", f"{source}:metrics/{name}.json"], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(shown.stdout)


def cell(row: dict, key: str, spec: str) -> str:
    if row.get(key) is None:
        return "—"
    ci = row.get("ci95", {}).get(key)
    interval = f" [{format(ci['lo'], spec)}, {format(ci['hi'], spec)}]" if ci else ""
    return format(row[key], spec) + interval


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="git revisions or `workspace`")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/generator_designs_toy.md")
    args = parser.parse_args(argv)

    header = ["design", "codes / image", "RQ-VAE val PSNR by levels (dB)", "train_prior s", "val NLL (nats/code)",
              *[label for _, label, _ in FIGURES], "images / s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for source in args.sources:
        rqvae, prior, gen = read_metrics(source, "rqvae"), read_metrics(source, "prior"), read_metrics(source, "evaluate")
        rq = gen["gen"]["rq_prior"]
        sides = rqvae.get("scales") or [rqvae["grid"][0]] * len(rqvae["psnr_by_levels"])
        design = f"{prior.get('kind', 'rq_transformer')}, levels {' → '.join(str(s) for s in sides)}"
        speed = gen.get("perf", {}).get("gen", {}).get("rq_prior", {}).get("images_per_s")
        lines.append("| " + " | ".join([
            design, str(prior["codes_per_image"]), " / ".join(f"{v:.2f}" for v in rqvae["psnr_by_levels"]),
            f"{prior['perf']['train_seconds']:.0f}", f"{prior['val_nll']:.3f}", *[cell(rq, key, spec) for key, _, spec in FIGURES],
            "—" if speed is None else f"{speed:.1f}",
        ]) + " |")
    n = gen["gen"].get("n")
    note = (f"From `metrics/*.json` of {', '.join(f'`{s}`' for s in args.sources)}, row by row: {n} validation conditions × "
            f"{gen['gen'].get('n_seeds', 1)} sampling seeds, "
            "95% bootstrap intervals in brackets; images / s is evaluate's end-to-end figure (prior + RQ-VAE + refiner, "
            "batched, guidance branches included), on the machine that ran each.")
    text = "\n".join(lines) + "\n\n" + note + "\n"
    atomic_write_text(args.out, text)
    print(text)
    return text


if __name__ == "__main__":
    main()
