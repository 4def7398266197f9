"""Where a Q4_K UNet forward spends its time on a CPU, against the same UNet uncompressed.

    python benchmarks/unet_forward_cpu.py [--arch sd15 --size 256] [--out benchmarks/results/unet_forward_cpu.json]

Builds the UNet (SD 1.5's architecture with random weights, or the toy's with `--arch tiny`),
writes it to GGUF under the default tensor policy and loads it with the dequantizing layers, then
times one CFG-batch forward (batch 2 at `--size` px) of each, in float32 and in bfloat16, best of
`--repeats` after a warm-up. The Q4_K UNet runs twice: with the decode the layers pick on a CPU
(the compiled kernel, `codecs/q4k_native.py`, where it builds) and with the torch decode
($SQUEEZEGEN_Q4K_DECODE=torch). In each Q4_K forward it also sums the time spent decoding
weights (`GGUFWeightModule.dequantized_weight`), so the decode's share is measured, not inferred.
Then one bf16 forward of each UNet runs under torch.profiler, and its operators' own CPU time is
grouped into convolution, matmul (linear layers), attention, norms and other, next to the decode:
where the time goes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src" / "squeezegen").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

import torch  # noqa: E402

from squeezegen.files import atomic_write_json  # noqa: E402
from squeezegen.quant.codecs.q4k import DECODE_ENV, q4k_decoder  # noqa: E402
from squeezegen.quant.gguf import layers  # noqa: E402
from squeezegen.quant.gguf.io import write_unet_gguf  # noqa: E402
from squeezegen.quant.gguf.unet_loader import load_gguf_unet  # noqa: E402
from squeezegen.quant.mix.policy import QuantPolicy  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_unet(arch: str) -> torch.nn.Module:
    if arch == "sd15":
        from squeezegen.sd.sd15 import build_sd15_components

        return build_sd15_components(seed=0)["unet"]
    from squeezegen.sd.tiny import build_tiny_pipeline

    return build_tiny_pipeline(0).unet


class DecodeClock:
    """Sums the seconds spent in the dequantizing layers' weight decode while installed."""

    def __init__(self) -> None:
        self.seconds, self.calls = 0.0, 0
        self._original = layers.GGUFWeightModule.dequantized_weight

    def __enter__(self) -> "DecodeClock":
        original = self._original

        def timed(module, dtype, **kwargs):
            start = time.perf_counter()
            weight = original(module, dtype, **kwargs)
            self.seconds += time.perf_counter() - start
            self.calls += 1
            return weight

        layers.GGUFWeightModule.dequantized_weight = timed
        return self

    def __exit__(self, *exc) -> None:
        layers.GGUFWeightModule.dequantized_weight = self._original


# torch.profiler operator name → group (first match wins); "decode" is timed by DecodeClock instead
GROUPS = (("convolution", ("conv", "mkldnn_convolution")), ("attention", ("scaled_dot_product", "_flash_attention", "softmax", "bmm", "baddbmm")),
          ("matmul", ("addmm", "aten::mm", "aten::matmul", "aten::linear")), ("norms", ("group_norm", "layer_norm", "native_")))


@torch.no_grad()
def profile_groups(unet: torch.nn.Module, inputs: tuple) -> dict[str, float]:
    """Seconds of one forward by operator group (self CPU time), plus the weight decode."""
    from torch.profiler import ProfilerActivity, profile

    unet(*inputs, return_dict=False)
    with DecodeClock() as clock, profile(activities=[ProfilerActivity.CPU]) as prof:
        unet(*inputs, return_dict=False)
    groups = {name: 0.0 for name, _ in GROUPS} | {"other": 0.0}
    for event in prof.key_averages():
        group = next((name for name, keys in GROUPS if any(k in event.key for k in keys)), "other")
        groups[group] += event.self_cpu_time_total / 1e6
    return {"decode": clock.seconds, **groups}


@torch.no_grad()
def best_forward(unet: torch.nn.Module, inputs: tuple, repeats: int) -> tuple[float, float]:
    """(best seconds of one forward, decode seconds within that best forward), after a warm-up."""
    unet(*inputs, return_dict=False)
    best, best_decode = float("inf"), 0.0
    for _ in range(repeats):
        with DecodeClock() as clock:
            start = time.perf_counter()
            unet(*inputs, return_dict=False)
            seconds = time.perf_counter() - start
        if seconds < best:
            best, best_decode = seconds, clock.seconds
    return best, best_decode


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="sd15", choices=["sd15", "tiny"])
    p.add_argument("--size", type=int, default=256, help="image side in px (latents are size / 8)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)

    unet = build_unet(args.arch).eval()
    with tempfile.TemporaryDirectory(prefix="unet_forward_") as scratch:
        path = Path(scratch) / "unet.gguf"
        report = write_unet_gguf(path, unet.state_dict(), policy=QuantPolicy(), progress=False)
        q4k = {name: load_gguf_unet(path, config=dict(unet.config), compute_dtype=dtype).eval() for name, dtype in DTYPES.items()}
    side = args.size // 8
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, unet.config.in_channels, side, side, generator=generator)  # CFG: two samples
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    timestep = torch.tensor([500, 500])
    result: dict = {"arch": args.arch, "size": args.size, "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "repeats": args.repeats, "q4k_fraction": report.q4k_fraction, "unet_bpw": report.bpw}
    result["q4k_decoder"] = q4k_decoder(torch.device("cpu"))
    for name, dtype in DTYPES.items():
        inputs = (latents.to(dtype), timestep, text.to(dtype))
        plain, _ = best_forward(unet.to(dtype), inputs, args.repeats)
        packed, decode = best_forward(q4k[name], inputs, args.repeats)
        os.environ[DECODE_ENV] = "torch"
        try:
            packed_torch, decode_torch = best_forward(q4k[name], inputs, args.repeats)
        finally:
            del os.environ[DECODE_ENV]
        result[name] = {"uncompressed_s": plain, "q4k_s": packed, "q4k_decode_s": decode, "q4k_rest_s": packed - decode,
                        "q4k_vs_uncompressed": packed / plain, "decode_share": decode / packed,
                        "q4k_torch_decode_s": packed_torch, "torch_decode_s": decode_torch,
                        "decode_speedup": decode_torch / decode if decode else None}
        r = result[name]
        print(f"{name}: uncompressed {plain:.3f} s, Q4_K {packed:.3f} s ({r['q4k_vs_uncompressed']:.2f}×): "
              f"decode {decode:.3f} s ({r['decode_share']:.0%}, {result['q4k_decoder']}), the rest {packed - decode:.3f} s; "
              f"with the torch decode {packed_torch:.3f} s (decode {decode_torch:.3f} s)")
    result["bf16_vs_fp32_uncompressed"] = result["bfloat16"]["uncompressed_s"] / result["float32"]["uncompressed_s"]
    result["bf16_q4k_vs_fp32_uncompressed"] = result["bfloat16"]["q4k_s"] / result["float32"]["uncompressed_s"]
    inputs = (latents.to(torch.bfloat16), timestep, text.to(torch.bfloat16))
    result["profile_bf16"] = {"uncompressed": profile_groups(unet.to(torch.bfloat16), inputs),
                              "q4k": profile_groups(q4k["bfloat16"], inputs)}
    for which, groups in result["profile_bf16"].items():
        print(f"bf16 {which} profile (s): " + ", ".join(f"{k} {v:.3f}" for k, v in groups.items()))
    if args.out:
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
