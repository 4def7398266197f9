"""The compiled Q4_K CPU decode: the same bits as the reference decode, and a clean fallback."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from squeezegen.errors import UserError
from squeezegen.quant.codecs import q4k, q4k_native
from squeezegen.quant.codecs.q4k import dequantize_q4_k, quantize_q4_k
from squeezegen.quant.codecs.registry import codec

needs_kernel = pytest.mark.skipif(not q4k_native.available(), reason="no C compiler to build the Q4_K CPU kernel")


def blocks_of_every_kind() -> np.ndarray:
    """Rows of 256: random, tiny (fp16 subnormal scales), constant (±, 0), and heavy outliers."""
    rng = np.random.default_rng(0)
    rows = [rng.normal(0, 0.02, 256), 1e-6 * rng.normal(0, 1, 256), np.full(256, 0.5), np.full(256, -3.0),
            np.zeros(256), 1e-7 * np.ones(256)]
    spiky = rng.normal(0, 0.01, 256)
    spiky[[3, 100, 200]] = [40.0, -25.0, 7.0]
    rows.append(spiky)
    rows.append(0.02 * rng.standard_t(2, 256))
    return np.stack(rows).astype(np.float32)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_decode_equals_the_reference_bit_for_bit(dtype):
    x = blocks_of_every_kind()
    for packed in (quantize_q4_k(x), quantize_q4_k(x, method="ggml")):
        reference = torch.from_numpy(dequantize_q4_k(packed)).to(dtype)  # numpy float32, then torch's cast
        got = q4k_native.dequantize_q4_k_native(torch.from_numpy(packed), dtype)
        assert got.dtype == dtype and got.shape == x.shape
        assert torch.equal(got.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                           reference.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))


@needs_kernel
def test_a_large_tensor_split_across_threads_decodes_the_same(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 0.02, (q4k_native.PARALLEL_MIN_BLOCKS + 37, 256)).astype(np.float32)
    packed = torch.from_numpy(quantize_q4_k(x, method="ggml"))
    reference = codec("Q4_K").dequantize_torch(packed, torch.bfloat16)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # an uneven split
    assert torch.equal(q4k_native.dequantize_q4_k_native(packed, torch.bfloat16), reference)


@needs_kernel
def test_the_layers_use_the_kernel_on_a_cpu_and_agree_with_the_torch_decode(monkeypatch):
    packed = torch.from_numpy(quantize_q4_k(blocks_of_every_kind()))
    monkeypatch.delenv(q4k.DECODE_ENV, raising=False)
    assert q4k.q4k_decoder(torch.device("cpu")) == "native"
    calls = []
    real = q4k_native.dequantize_q4_k_native
    monkeypatch.setattr(q4k_native, "dequantize_q4_k_native", lambda p, d, out=None: calls.append(d) or real(p, d, out=out))
    fast = codec("Q4_K").runtime_decode(packed, torch.bfloat16)
    half = codec("Q4_K").runtime_decode(packed, torch.float16)  # a dtype the kernel does not write: torch decode
    assert calls == [torch.bfloat16]
    monkeypatch.setenv(q4k.DECODE_ENV, "torch")
    assert torch.equal(fast, codec("Q4_K").runtime_decode(packed, torch.bfloat16))
    assert torch.equal(half, codec("Q4_K").dequantize_torch(packed, torch.float16))


def test_no_compiler_falls_back_to_torch_with_one_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("SQUEEZEGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(q4k.DECODE_ENV, raising=False)
    q4k_native.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=q4k_native.__name__):
            assert not q4k_native.available()
        assert "could not build the Q4_K CPU kernel" in caplog.text
        assert q4k.q4k_decoder(torch.device("cpu")) == "torch"
        monkeypatch.setenv(q4k.DECODE_ENV, "native")
        with pytest.raises(UserError, match="CPU kernel could not be built"):
            q4k.q4k_decoder(torch.device("cpu"))
        assert not (tmp_path / "cache" / "kernels").exists() or not any((tmp_path / "cache" / "kernels").glob("*.so"))
    finally:
        q4k_native.library.cache_clear()


@needs_kernel
def test_the_kernel_is_built_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SQUEEZEGEN_CACHE", str(tmp_path))
    q4k_native.library.cache_clear()
    try:
        assert q4k_native.available()
        built = list((tmp_path / "kernels").glob("q4k_cpu-*.so"))
        assert len(built) == 1 and not list((tmp_path / "kernels").glob("*.tmp"))
        stamp = built[0].stat().st_mtime_ns
        q4k_native.library.cache_clear()
        assert q4k_native.available() and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
    finally:
        q4k_native.library.cache_clear()


def test_a_forward_without_autograd_decodes_into_one_reused_buffer():
    from torch import nn

    from squeezegen.quant.gguf import layers

    torch.manual_seed(0)
    linears = [nn.Linear(512, 16), nn.Linear(256, 32)]
    modules = [layers.GGUFLinear.from_linear(lin, packed=torch.from_numpy(quantize_q4_k(lin.weight.detach().numpy())),
                                             qtype=codec("Q4_K").qtype) for lin in linears]
    x = [torch.randn(3, 512), torch.randn(3, 256)]
    fresh = [m(xi) for m, xi in zip(modules, x)]  # autograd on: fresh tensors
    with torch.inference_mode():
        reused = [m(xi) for m, xi in zip(modules, x)]
        a = modules[0].dequantized_weight(torch.float32, reuse_buffer=True)
        b = modules[1].dequantized_weight(torch.float32, reuse_buffer=True)
        assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()  # one buffer for every layer
        kept = modules[0].dequantized_weight(torch.float32)  # callers that keep a weight get their own
        assert kept.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()
    assert all(torch.equal(f.detach(), r) for f, r in zip(fresh, reused))
