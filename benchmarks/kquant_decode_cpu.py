"""Every K-quant's run-time decode on this CPU, against the matmul it feeds.

    python benchmarks/kquant_decode_cpu.py [--rows 1280 --cols 5120 --tokens 1024] [--out benchmarks/results/kquant_decode_cpu.json]

A GGUF UNet decodes each packed weight on every forward, then multiplies. On one SD 1.5-sized
Linear (1280 × 5120 by default) this times, for every type of the codec registry, the decode to
float32 and to bfloat16 (`Codec.runtime_decode`, what the layers call), and the matmul of the
decoded weight with `--tokens` activation rows in the same dtype (`F.linear`, torch's own
kernels): the decode's share of decode + matmul is what decoding costs a layer. Best of
`--repeats` after a warm-up, in one run, so the ratios hold on a loaded machine; `threads` says
how many intra-op threads torch used.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src" / "squeezegen").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from squeezegen.files import atomic_write_json, atomic_write_text  # noqa: E402
from squeezegen.quant.codecs.registry import CODECS  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def best_seconds(fn, repeats: int) -> float:
    """Best-of-`repeats` wall seconds of `fn()`, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(rows: int, cols: int, tokens: int, repeats: int) -> dict:
    """{type: {dtype: decode / matmul seconds, M weights/s, the decode's share}} for one matrix."""
    x = np.random.default_rng(0).normal(0, 0.02, (rows, cols)).astype(np.float32)
    activations = {name: torch.randn(tokens, cols, generator=torch.Generator().manual_seed(1)).to(dtype)
                   for name, dtype in DTYPES.items()}
    out: dict = {}
    for codec in CODECS.values():
        packed = torch.from_numpy(codec.quantize(x))
        figures = {}
        for name, dtype in DTYPES.items():
            weight = codec.runtime_decode(packed, dtype).reshape(rows, cols)
            decode_s = best_seconds(lambda: codec.runtime_decode(packed, dtype), repeats)
            matmul_s = best_seconds(lambda: F.linear(activations[name], weight), repeats)
            figures[name] = {"decode_s": decode_s, "matmul_s": matmul_s, "mweights_per_s": x.size / decode_s / 1e6,
                             "decode_share": decode_s / (decode_s + matmul_s)}
        out[codec.name] = figures
    return out


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [f"Decode vs matmul on {result['device']} ({result['threads']} threads, torch {result['torch']}): one "
             f"{s['rows']} × {s['cols']} weight, {s['tokens']} activation rows; best of {s['repeats']}.", "",
             "| type | decode → fp32 (M weights/s) | share of decode + fp32 matmul | decode → bf16 (M weights/s) "
             "| share of decode + bf16 matmul |", "|---|---|---|---|---|"]
    for name, figures in result["types"].items():
        f32, b16 = figures["float32"], figures["bfloat16"]
        lines.append(f"| {name} | {f32['mweights_per_s']:,.0f} | {f32['decode_share']:.0%} | {b16['mweights_per_s']:,.0f} "
                     f"| {b16['decode_share']:.0%} |")
    matmul = result["types"]["Q4_K"]
    lines += ["", f"The matmul alone: {matmul['float32']['matmul_s'] * 1e3:.1f} ms in fp32, "
                  f"{matmul['bfloat16']['matmul_s'] * 1e3:.1f} ms in bf16."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1280)
    p.add_argument("--cols", type=int, default=5120, help="multiple of 256")
    p.add_argument("--tokens", type=int, default=1024, help="activation rows per matmul (SD 1.5 at 256 px: 32×32 latents)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="write the figures as JSON here (and a .md table beside it)")
    args = p.parse_args(argv)
    result = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "settings": {"rows": args.rows, "cols": args.cols, "tokens": args.tokens, "repeats": args.repeats},
              "types": measure(args.rows, args.cols, args.tokens, args.repeats)}
    table = markdown(result)
    print(table)
    if args.out:
        atomic_write_json(args.out, result)
        atomic_write_text(Path(args.out).with_suffix(".md"), table)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
