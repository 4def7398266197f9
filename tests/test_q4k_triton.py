"""The fused Triton Q4_K decode: bit-identical to the numpy/torch decode, and the decoder choice.

The kernel itself needs Triton: on a GPU it runs natively, on a CPU through Triton's
interpreter (TRITON_INTERPRET=1, set in a child process because Triton reads it at import).
Without Triton (CPU-only installs, CI) only the choice of decoder is tested here.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType

from squeezegen.errors import UserError
from squeezegen.quant.codecs import q4k, q4k_native, q4k_triton
from squeezegen.quant.codecs.q4k import dequantize_q4_k, quantize_q4_k
from squeezegen.quant.codecs.registry import codec
from squeezegen.quant.gguf import layers as modules

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")
needs_cuda_triton = pytest.mark.skipif(
    not (torch.cuda.is_available() and q4k_triton.available()), reason="needs a GPU and Triton"
)

# Heavy-tailed rows, an outlier, a constant block, zeros, and a block count that does not fill
# the kernel's last program (the masked tail).
CHECK = textwrap.dedent(
    """
    import numpy as np, torch
    from squeezegen.quant.codecs.q4k import quantize_q4_k, dequantize_q4_k
    from squeezegen.quant.codecs.registry import codec
    from squeezegen.quant.codecs.q4k_triton import dequantize_q4_k_triton
    rng = np.random.default_rng(0)
    x = (0.02 * rng.standard_t(2, (3, 5, 768))).astype(np.float32)
    x[0, 1, 7], x[1, 2, :256], x[2, 4, 256:512] = 40.0, -0.5, 0.0
    packed = torch.from_numpy(quantize_q4_k(x))  # 45 super-blocks
    assert np.array_equal(dequantize_q4_k_triton(packed).numpy(), dequantize_q4_k(packed.numpy()))
    assert torch.equal(dequantize_q4_k_triton(packed, torch.float16), codec("Q4_K").dequantize_torch(packed, torch.float16))
    print("identical")
    """
)


@needs_triton
def test_triton_kernel_in_the_interpreter_equals_the_numpy_decode():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "identical" in result.stdout


@needs_cuda_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_kernel_on_the_gpu_equals_the_torch_decode(dtype):
    rng = np.random.default_rng(1)
    x = (0.02 * rng.standard_t(2, (64, 4096 + 256))).astype(np.float32)
    packed = torch.from_numpy(quantize_q4_k(x)).cuda()
    got = q4k_triton.dequantize_q4_k_triton(packed, dtype)
    assert got.dtype == dtype and got.shape == x.shape
    assert torch.equal(got, codec("Q4_K").dequantize_torch(packed, dtype))
    assert np.array_equal(q4k_triton.dequantize_q4_k_triton(packed).cpu().numpy(), dequantize_q4_k(packed.cpu().numpy()))


def test_decoder_choice(monkeypatch):
    monkeypatch.delenv(q4k.DECODE_ENV, raising=False)
    monkeypatch.setattr(q4k_native, "available", lambda: False)
    assert q4k.q4k_decoder(torch.device("cpu")) == "torch"  # Triton's kernel is for CUDA tensors
    monkeypatch.setattr(q4k_triton, "available", lambda: True)
    assert q4k.q4k_decoder(torch.device("cuda")) == "triton"
    monkeypatch.setenv(q4k.DECODE_ENV, "torch")
    assert q4k.q4k_decoder(torch.device("cuda")) == "torch"
    monkeypatch.setattr(q4k_triton, "available", lambda: False)
    monkeypatch.delenv(q4k.DECODE_ENV)
    assert q4k.q4k_decoder(torch.device("cuda")) == "torch"  # silent fallback under "auto"
    monkeypatch.setenv(q4k.DECODE_ENV, "triton")
    with pytest.raises(UserError, match="Triton is not installed"):
        q4k.q4k_decoder(torch.device("cuda"))
    assert q4k.q4k_decoder(torch.device("cpu")) == "torch"  # a CUDA kernel named does not apply to CPU tensors
    monkeypatch.setenv(q4k.DECODE_ENV, "fast")
    with pytest.raises(UserError, match="SQUEEZEGEN_Q4K_DECODE='fast'"):
        q4k.q4k_decoder(torch.device("cpu"))


def test_dequantize_torch_routes_q4k_through_the_chosen_decoder(monkeypatch):
    """With the choice forced to "triton", a Q4_K weight goes through the kernel's entry point."""
    rng = np.random.default_rng(2)
    packed = torch.from_numpy(quantize_q4_k(rng.normal(0, 0.02, (4, 512)).astype(np.float32)))
    calls = []

    def fake_kernel(p, dtype):
        calls.append(dtype)
        return codec("Q4_K").dequantize_torch(p, dtype)

    monkeypatch.setattr(q4k, "q4k_decoder", lambda device: "triton")
    monkeypatch.setattr(q4k_triton, "dequantize_q4_k_triton", fake_kernel)
    weight = modules.dequantize_torch(packed, GGMLQuantizationType.Q4_K, (4, 512), torch.float16)
    assert calls == [torch.float16] and weight.shape == (4, 512)
