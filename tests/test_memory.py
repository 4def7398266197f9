"""Memory probes: peak RSS of a block (with and without a VmHWM reset), CUDA peaks, resident bytes."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
import torch
from torch import nn

from squeezegen.memory import probes as memory
from squeezegen.memory.accounting import component_bytes, module_bytes
from squeezegen.memory.probes import measure_peak

MB = 10**6
needs_proc = pytest.mark.skipif(memory.current_rss() is None, reason="needs Linux /proc/self/status")


def _touch(n_bytes: int) -> mmap.mmap:
    """n_bytes of fresh anonymous memory with every page written (resident).

    Mapped straight from the kernel: a block from np.empty can be served from pages the allocator
    kept resident after an earlier test, and the full suite once measured such a 200 MB block as
    0 bytes. Deleting the returned map gives the pages back."""
    block = mmap.mmap(-1, n_bytes)
    view = np.frombuffer(block, dtype=np.uint8)
    view.fill(1)
    del view  # release the buffer export, so the map can be closed when the caller drops it
    return block


@needs_proc
def test_peak_sees_a_known_allocation():
    with measure_peak("cpu") as peak:
        block = _touch(200 * MB)
        del block
    assert peak.peak_bytes == peak.peak_rss
    assert peak.peak_delta >= 190 * MB, peak.as_dict()
    assert peak.peak_allocated is None and peak.device_name.startswith("cpu")


@needs_proc
def test_reset_forgets_earlier_peaks():
    del_me = _touch(300 * MB)
    del del_me  # large blocks go back to the kernel: RSS drops, but VmHWM remembers them
    with measure_peak("cpu") as peak:
        small = _touch(1 * MB)
    del small
    if peak.method != "vmhwm-reset":
        pytest.skip(f"VmHWM cannot be reset here ({peak.method})")
    assert peak.peak_delta < 100 * MB, peak.as_dict()


@needs_proc
def test_fallback_sampler_when_clear_refs_is_not_writable(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "PROC_CLEAR_REFS", tmp_path / "no" / "such" / "clear_refs")
    with measure_peak("cpu") as peak:
        block = _touch(200 * MB)
    del block
    assert peak.method.startswith("rss-sampled") and "clear_refs" in peak.method
    assert peak.peak_delta >= 190 * MB, peak.as_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_peak_sees_a_known_allocation():
    memory.free_memory("cuda")
    with measure_peak("cuda") as peak:
        x = torch.empty(256 * MB, dtype=torch.uint8, device="cuda")
        del x
    assert peak.peak_allocated - peak.start_allocated >= 256 * MB
    assert peak.peak_reserved >= peak.peak_allocated


def test_module_bytes_counts_params_and_buffers_once():
    layer = nn.Linear(256, 64)  # fp32: (256*64 + 64) * 4 bytes
    layer.register_buffer("scale", torch.zeros(10, dtype=torch.float16))
    model = nn.Sequential(layer, layer)  # the same module twice: counted once
    got = module_bytes(model)
    assert got["bytes"] == (256 * 64 + 64) * 4 + 10 * 2
    assert got["by_dtype"] == {"float16": 20, "float32": (256 * 64 + 64) * 4}
    assert got["devices"] == ["cpu"]
    assert got["by_device"] == {"cpu": got["bytes"]}


def test_packed_gguf_weight_counts_at_packed_size():
    from gguf.constants import GGMLQuantizationType

    from squeezegen.quant.codecs.q4k import quantize_q4_k
    from squeezegen.quant.gguf.layers import GGUFLinear

    dense = nn.Linear(512, 128, bias=False)
    packed = torch.from_numpy(quantize_q4_k(dense.weight.detach().numpy()))  # uint8 [128, 2*144]
    q = GGUFLinear.from_linear(dense, packed=packed, qtype=GGMLQuantizationType.Q4_K)
    assert module_bytes(q)["bytes"] == 128 * 2 * 144  # 4.5 bits per weight
    assert module_bytes(q)["bytes"] < module_bytes(dense.half())["bytes"] / 3


def test_component_bytes_per_pipeline_component():
    class Pipe:
        components = {"unet": nn.Linear(4, 4), "tokenizer": object(), "vae": nn.Conv2d(3, 3, 1)}

    got = component_bytes(Pipe(), extra={"cpu_vae": nn.Linear(2, 2, bias=False)})
    assert set(got) == {"unet", "vae", "cpu_vae", "total"}
    assert got["unet"]["bytes"] == (16 + 4) * 4 and got["cpu_vae"]["bytes"] == 16
    assert got["total"]["bytes"] == sum(v["bytes"] for k, v in got.items() if k != "total")
