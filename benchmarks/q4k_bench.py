"""Benchmark the Q4_K quantizer: accuracy and speed against the plain min/max packer.

    python benchmarks/q4k_bench.py [--n-weights N] [--seed S] [--out metrics/q4k_bench.json]

On N(0, 0.02²) weights (the scale of SD 1.5's Linear and conv weights) it reports the relative
RMSE ‖x − deq(q(x))‖/‖x‖ and the throughput (M weights/s, wall clock, all worker threads) of
  refined — quantize_q4_k (ggml's search + the refinement pass; the default),
  ggml    — quantize_q4_k(method="ggml") (ggml's reference algorithm, vectorized),
  minmax  — quantize_q4_k_minmax (scale = range/15, the baseline),
next to the published relative RMSE of ggml's own C reference quantizer on such
weights (a constant, labelled as such). To measure ggml's C code on the same data instead, build
it with benchmarks/ggml_ref/ and run benchmarks/kquant_codecs.py (every K-quant; it measured
0.07129 for quantize_row_q4_K_ref and 0.07069 for ggml's all-ones importance path).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from squeezegen.files import atomic_write_json
from squeezegen.metrics_files import split_perf
from squeezegen.quant.codecs.q4k import (
    QK_K,
    dequantize_q4_k,
    quantize_q4_k,
    quantize_q4_k_minmax,
    worker_threads,
)

GGML_REFERENCE_REL_RMSE_PUBLISHED = 0.0713  # quantize_row_q4_K_ref on N(0, 0.02²), as published
ROW = 4096  # weights per row of the test matrix (a typical Linear/conv row length)

QUANTIZERS = {
    "refined": quantize_q4_k,
    "ggml": lambda x: quantize_q4_k(x, method="ggml"),
    "minmax": quantize_q4_k_minmax,
}


def measure(x: np.ndarray, repeats: int) -> dict[str, dict[str, float]]:
    """Relative RMSE and best-of-`repeats` throughput of each quantizer on `x`."""
    results = {}
    for name, quantize in QUANTIZERS.items():
        quantize(x[:1])  # warm-up: first-call costs stay out of the timing
        seconds = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            packed = quantize(x)
            seconds = min(seconds, time.perf_counter() - start)
        y = dequantize_q4_k(packed)
        results[name] = {
            "rel_rmse": float(np.linalg.norm(x - y) / np.linalg.norm(x)),
            "seconds": seconds,
            "mweights_per_s": x.size / seconds / 1e6,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-weights", type=int, default=4 * 2**20,
                        help="weights to quantize (rounded down to rows of 4096)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed runs per quantizer (the fastest counts)")
    parser.add_argument("--out", default=None,
                        help="also write the metrics as JSON here, e.g. metrics/q4k_bench.json")
    args = parser.parse_args()

    rows = max(1, args.n_weights // ROW)
    x = np.random.default_rng(args.seed).normal(0, 0.02, (rows, ROW)).astype(np.float32)
    results = measure(x, args.repeats)
    metrics = {
        "n_weights": int(x.size),
        "block_size": QK_K,
        "threads": worker_threads(),
        **{f"{name}_{key}": value for name, r in results.items() for key, value in r.items()},
        "ggml_reference_rel_rmse_published": GGML_REFERENCE_REL_RMSE_PUBLISHED,
        "refined_vs_minmax_rmse_ratio": results["refined"]["rel_rmse"] / results["minmax"]["rel_rmse"],
        "refined_vs_minmax_speed_ratio": (
            results["refined"]["mweights_per_s"] / results["minmax"]["mweights_per_s"]
        ),
    }

    print(f"Q4_K on {x.size:,} N(0, 0.02²) weights, {metrics['threads']} CPU thread(s)")
    print(f"{'quantizer':<28}{'rel RMSE':>10}{'M weights/s':>14}")
    for name, r in results.items():
        print(f"{name:<28}{r['rel_rmse']:>10.5f}{r['mweights_per_s']:>14.2f}")
    print(f"{'ggml C reference (published)':<28}{GGML_REFERENCE_REL_RMSE_PUBLISHED:>10.4f}{'':>14}")
    if args.out:
        atomic_write_json(args.out, split_perf(metrics))  # timings under "perf"
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
