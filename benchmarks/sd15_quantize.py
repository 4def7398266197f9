"""Quantize an SD 1.5-architecture UNet (random weights, built from its config) with the policy.

    python benchmarks/sd15_quantize.py [--out metrics/sd15_quantize.json]

Prints the GGUF size, bits per weight, the share of parameters in Q4_K, the types of the time
embeddings and the wall time of quantization (weight values do not change sizes or timings
much, so no download is needed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from squeezegen.config import load_config
from squeezegen.files import atomic_write_json
from squeezegen.metrics_files import split_perf
from squeezegen.quant.gguf.io import write_unet_gguf
from squeezegen.sd.sd15 import SD15_UNET_CONFIG
from squeezegen.stages.quantize import quant_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file whose `quantize:` policy is used")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    torch.manual_seed(0)
    state_dict = UNet2DConditionModel(**SD15_UNET_CONFIG).state_dict()
    policy = quant_policy(load_config(args.params).quantize)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = write_unet_gguf(Path(tmp) / "unet.gguf", state_dict, policy=policy, progress=False)
        seconds = time.perf_counter() - start
    time_types = sorted({t.qtype for t in report.tensors if "time_embedding" in t.name})
    figures = {
        "quantize_seconds": round(seconds, 1),
        "unet_params": sum(t.n_params for t in report.tensors),
        "unet_bytes_gguf": report.bytes_gguf,
        "unet_bytes_fp16": report.bytes_fp16,
        "unet_bpw": report.bpw,
        "q4k_fraction": report.q4k_fraction,
        "time_embedding_types": time_types,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        atomic_write_json(args.out, split_perf(figures))  # timings under "perf"


if __name__ == "__main__":
    main()
