"""Benchmark the run-time Q4_K decode: the fused Triton kernel against the torch decode.

    python benchmarks/q4k_decode_bench.py [--device cuda] [--out metrics/q4k_decode_bench.json]

Every forward of a GGUF UNet decodes all its Q4_K weights (~860 M for SD 1.5), so this decode
sets the speed of the compressed pipeline. On one SD 1.5-sized matrix (1280 × 5120, the largest
Linear) it times each decoder to the compute dtype (best of --repeats, after a warm-up;
synchronized on CUDA) and reports M weights/s, the output GB/s and the time that decoding SD
1.5's 859.5 M UNet weights would take, plus the triton / torch speed ratio from the same run.
On a CPU only the torch decode runs (the kernel is for CUDA tensors).
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

from squeezegen.files import atomic_write_json  # noqa: E402
from squeezegen.quant.codecs import q4k_triton  # noqa: E402
from squeezegen.quant.codecs.q4k import quantize_q4_k  # noqa: E402
from squeezegen.quant.codecs.registry import codec  # noqa: E402

SD15_UNET_WEIGHTS = 859_520_964  # UNet2DConditionModel parameters at SD 1.5's config


def time_decoder(decode, packed: torch.Tensor, dtype: torch.dtype, repeats: int) -> float:
    """Best-of-`repeats` seconds of one decode (after a warm-up that compiles/caches)."""
    decode(packed, dtype)
    best = float("inf")
    for _ in range(repeats):
        if packed.is_cuda:
            torch.cuda.synchronize(packed.device)
        start = time.perf_counter()
        decode(packed, dtype)
        if packed.is_cuda:
            torch.cuda.synchronize(packed.device)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--rows", type=int, default=1280)
    p.add_argument("--cols", type=int, default=5120, help="multiple of 256")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cpu":
        dtype = torch.float32  # the CPU pipeline computes in fp32

    x = np.random.default_rng(0).normal(0, 0.02, (args.rows, args.cols)).astype(np.float32)
    packed = torch.from_numpy(quantize_q4_k(x)).to(device)
    decoders = {"torch": codec("Q4_K").dequantize_torch}
    if device.type == "cuda" and q4k_triton.available():
        decoders["triton"] = q4k_triton.dequantize_q4_k_triton
        assert torch.equal(decoders["triton"](packed, dtype), codec("Q4_K").dequantize_torch(packed, dtype))

    n = x.size
    out: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "dtype": str(dtype).removeprefix("torch."), "n_weights": n, "torch": torch.__version__}
    print(f"Q4_K decode of {args.rows}×{args.cols} to {out['dtype']} on {out['device']}")
    print(f"{'decoder':<10}{'ms':>10}{'M weights/s':>14}{'out GB/s':>10}{'SD 1.5 UNet ms':>16}")
    for name, decode in decoders.items():
        seconds = time_decoder(decode, packed, dtype, args.repeats)
        rate = n / seconds
        out[name] = {
            "seconds": seconds,
            "mweights_per_s": rate / 1e6,
            "out_gb_per_s": rate * dtype.itemsize / 1e9,
            "sd15_unet_ms": SD15_UNET_WEIGHTS / rate * 1e3,
        }
        r = out[name]
        print(f"{name:<10}{seconds * 1e3:>10.3f}{r['mweights_per_s']:>14,.0f}{r['out_gb_per_s']:>10.1f}{r['sd15_unet_ms']:>16.1f}")
    if "triton" in out:
        out["triton_speedup"] = out["torch"]["seconds"] / out["triton"]["seconds"]
        print(f"triton is {out['triton_speedup']:.1f}× the torch decode (same run)")
    if args.out:
        atomic_write_json(args.out, out)
        print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
