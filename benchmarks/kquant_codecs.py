"""Benchmark the K-quant codecs (Q2_K … Q6_K, Q8_0) against ggml's own C quantizers.

    python benchmarks/kquant_codecs.py [--ggml-harness /tmp/ggmlbuild/harness] [--out metrics/kquant_codecs.json]

On 1 Mi weights (rows of 4096, seed 0) of N(0, 0.02²) — the scale of SD 1.5's weights — and of
0.02·Student-t(3) (heavy tails), for each type it reports our relative RMSE ‖x − deq(q(x))‖/‖x‖,
throughput (weights/s, wall clock, all worker threads, best of --repeats), whether gguf-py
decodes our bytes bit for bit as we do, and the error on rows of magnitude 1e-6 next to the
all-zero block's (1.0). With --ggml-harness (built by benchmarks/ggml_ref/build.sh from a ggml
checkout, outside the repo) it runs ggml's two paths on the same data — quantize_row_*_ref and
quantize_* with an all-ones importance matrix (what ggml_quantize_chunk runs) — decodes their
bytes with gguf-py, and records their RMSE and our ratio to the better one.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from gguf.quants import dequantize as gguf_dequantize

from squeezegen.files import atomic_write_json
from squeezegen.metrics_files import split_perf
from squeezegen.quant.codecs.q4k import worker_threads
from squeezegen.quant.codecs.registry import CODECS

ROW = 4096  # weights per row (the harness uses the same)


def datasets(n_weights: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = max(1, n_weights // ROW) * ROW
    return {
        "gauss": rng.normal(0, 0.02, n).astype(np.float32).reshape(-1, ROW),
        "t3": (rng.standard_t(3, n) * 0.02).astype(np.float32).reshape(-1, ROW),
    }


def rel_rmse(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.linalg.norm(x - y) / np.linalg.norm(x))


def measure_ours(x: np.ndarray, repeats: int) -> dict[str, dict]:
    results = {}
    for qtype, codec in CODECS.items():
        codec.quantize(x[:1])  # warm-up
        seconds = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            packed = codec.quantize(x)
            seconds = min(seconds, time.perf_counter() - start)
        ours = codec.dequantize(packed)
        theirs = gguf_dequantize(packed, qtype).astype(np.float32)
        results[qtype.name] = {
            "rel_rmse": rel_rmse(x, ours),
            "gguf_bit_exact": bool(np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))),
            "weights_per_s": x.size / seconds,
        }
    return results


def measure_ggml(harness: Path, x: np.ndarray) -> dict[str, dict]:
    """ggml's ref and all-ones-importance paths on x, decoded by gguf-py."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "x.f32", Path(tmp) / "out.bin"
        x.tofile(src)
        for qtype in CODECS:
            row = {}
            for mode in ("ref", "ones"):
                c_name = qtype.name[0].lower() + qtype.name[1:]  # q2_K … q8_0, as in ggml's symbols
                subprocess.run([str(harness), c_name, mode, str(src), str(x.size), str(dst)], check=True)
                packed = np.fromfile(dst, dtype=np.uint8).reshape(x.shape[0], -1)
                row[mode] = rel_rmse(x, gguf_dequantize(packed, qtype).astype(np.float32))
            results[qtype.name] = row
    return results


def tiny_data(seed: int) -> np.ndarray:
    """N(0, (1e-6)²) rows, where fp16 block scales underflow (an all-zero block scores 1.0)."""
    return np.random.default_rng(seed).normal(0, 1e-6, (16, ROW)).astype(np.float32)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-weights", type=int, default=2**20, help="weights per distribution")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per type (the fastest counts)")
    parser.add_argument("--ggml-harness", type=Path, default=None, help="ggml reference harness (build.sh)")
    parser.add_argument("--out", default=None, help="write the metrics as JSON here, e.g. metrics/kquant_codecs.json")
    args = parser.parse_args(argv)

    metrics: dict = {"n_weights": None, "row": ROW, "threads": worker_threads(), "types": {}}
    for dist, x in datasets(args.n_weights, args.seed).items():
        metrics["n_weights"] = int(x.size)
        ours = measure_ours(x, args.repeats)
        ggml = measure_ggml(args.ggml_harness, x) if args.ggml_harness else {}
        for name, row in ours.items():
            entry = metrics["types"].setdefault(name, {"bits_per_weight": CODECS_BY_NAME[name].bits_per_weight})
            entry[dist] = dict(row)
            if name in ggml:
                best = min(ggml[name].values())
                entry[dist].update(ggml_ref_rel_rmse=ggml[name]["ref"], ggml_ones_rel_rmse=ggml[name]["ones"],
                                   ratio_to_ggml_best=row["rel_rmse"] / best)
    tiny = tiny_data(args.seed)
    ggml_tiny = measure_ggml(args.ggml_harness, tiny) if args.ggml_harness else {}
    for qtype, codec in CODECS.items():
        entry = metrics["types"][qtype.name]
        entry["tiny_1e-6_rel_rmse"] = rel_rmse(tiny, codec.dequantize(codec.quantize(tiny)))
        if qtype.name in ggml_tiny:
            entry["tiny_1e-6_ggml_ref_rel_rmse"] = ggml_tiny[qtype.name]["ref"]
            entry["tiny_1e-6_ggml_ones_rel_rmse"] = ggml_tiny[qtype.name]["ones"]

    print(f"{metrics['n_weights']:,} weights per distribution, {metrics['threads']} thread(s)")
    print(f"{'type':<6}{'dist':<7}{'rel RMSE':>10}{'ggml ref':>10}{'ggml ones':>10}{'ratio':>8}{'M w/s':>8}  exact")
    for name, entry in metrics["types"].items():
        for dist in ("gauss", "t3"):
            r = entry[dist]
            g = [f"{r[k]:>10.5f}" if k in r else f"{'-':>10}" for k in ("ggml_ref_rel_rmse", "ggml_ones_rel_rmse")]
            ratio = f"{r['ratio_to_ggml_best']:>8.4f}" if "ratio_to_ggml_best" in r else f"{'-':>8}"
            print(f"{name:<6}{dist:<7}{r['rel_rmse']:>10.5f}{''.join(g)}{ratio}{r['weights_per_s'] / 1e6:>8.1f}"
                  f"  {r['gguf_bit_exact']}")
    print("rows of 1e-6, rel RMSE (all-zero block = 1.0): ours / ggml ref / ggml ones")
    for name, e in metrics["types"].items():
        g = [f"{e[k]:.3f}" if k in e else "-" for k in ("tiny_1e-6_ggml_ref_rel_rmse", "tiny_1e-6_ggml_ones_rel_rmse")]
        print(f"  {name:<6}{e['tiny_1e-6_rel_rmse']:.3f} / {g[0]} / {g[1]}")
    if args.out:
        atomic_write_json(args.out, split_perf(metrics))  # throughput under "perf"
        print(f"wrote {args.out}")
    return metrics


CODECS_BY_NAME = {q.name: c for q, c in CODECS.items()}

if __name__ == "__main__":
    main()
