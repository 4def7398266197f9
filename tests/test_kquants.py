"""K-quant codec registry (Q2_K … Q6_K, Q8_0): bytes against gguf's decoder (the oracle), the
zero-block guarantee, errors, quality against ggml's own figures, torch decode, mixed GGUF files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize
from test_quant_runtime import tiny_unet  # noqa: F401  (fixture: a random tiny UNet and its inputs)

from squeezegen.errors import UserError
from squeezegen.quant.codecs.registry import CODECS, QUANTIZED_TYPES, codec
from squeezegen.quant.gguf.io import format_summary, read_gguf, summarize_gguf, write_planned_gguf
from squeezegen.quant.gguf.layers import GGUFLinear
from squeezegen.quant.mix.policy import TensorPlan

TYPES = sorted(CODECS, key=lambda t: t.name)


def _outliers(rng):
    x = rng.normal(0, 0.02, (4, 512))
    x[1, 7], x[2, 300] = 50.0, -1e4
    return x


INPUTS = {
    "normal": lambda rng: rng.normal(0, 0.02, (4, 1024)),
    "student_t_df3": lambda rng: 0.02 * rng.standard_t(3, (4, 1024)),
    "zeros": lambda rng: np.zeros((2, 512)),
    "constant": lambda rng: np.full((2, 256), -0.75),
    "outlier_rows": _outliers,
    "tiny_1e-6": lambda rng: rng.normal(0, 1e-6, (2, 512)),
    "tiny_1e-8": lambda rng: rng.normal(0, 1e-8, (2, 256)),
    "multi_dim": lambda rng: rng.normal(0, 1, (3, 2, 256)),
    "mixed_constant_and_random": lambda rng: np.concatenate([np.full(256, 0.5), rng.normal(0, 1, 256)]),
}

# Relative RMSE of ggml's better path (quantize_row_*_ref, or quantize_* with an all-ones importance
# matrix) on 1 Mi weights, from a throwaway C build of ggml-quants.c (ggml d99724f; docs/results.md):
# N(0, 0.02²) and 0.02·Student-t(3). The test runs 64 Ki weights, hence a 3% margin.
GGML_BEST = {
    T.Q2_K: (0.26794, 0.30426), T.Q3_K: (0.14462, 0.18235), T.Q4_K: (0.07069, 0.09158),
    T.Q5_K: (0.03535, 0.04656), T.Q6_K: (0.01732, 0.02548), T.Q8_0: (0.00535, 0.00858),
}  # fmt: skip


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _bits(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def test_registry_sizes_come_from_gguf_and_unknown_types_are_user_errors():
    assert set(QUANTIZED_TYPES) == {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"}
    for qtype, c in CODECS.items():
        assert (c.block_size, c.type_size) == GGML_QUANT_SIZES[qtype]
        assert codec(qtype.name) is c
    assert codec("Q2_K").bits_per_weight == 2.625 and codec("Q6_K").bits_per_weight == 6.5625
    with pytest.raises(UserError, match="Q4_0"):
        codec("Q4_0")


@pytest.mark.parametrize("case", sorted(INPUTS))
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_bytes_decode_like_gguf_and_never_worse_than_zeros(qtype, case, rng):
    x = INPUTS[case](rng).astype(np.float32)
    c = CODECS[qtype]
    packed = c.quantize(x, name=case)
    assert packed.dtype == np.uint8 and packed.shape == (*x.shape[:-1], x.shape[-1] // c.block_size * c.type_size)
    ours = c.dequantize(packed)
    theirs = gguf_dequantize(packed, qtype)
    np.testing.assert_array_equal(_bits(ours), _bits(theirs))
    blocks, rec = x.reshape(-1, c.block_size), ours.reshape(-1, c.block_size)
    err = ((blocks - rec) ** 2).sum(axis=1)
    assert (err <= (blocks * blocks).sum(axis=1)).all()  # every block at least as good as zeros


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_tiny_rows_beat_zeros(qtype, rng):
    """fp16 block scales underflow near 1e-6; the codecs still keep most of such a row."""
    x = rng.normal(0, 1e-6, (2, 512)).astype(np.float32)
    y = CODECS[qtype].dequantize(CODECS[qtype].quantize(x))
    assert np.linalg.norm(x - y) < 0.9 * np.linalg.norm(x)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_quality_matches_ggml_on_gaussian_and_heavy_tailed_weights(qtype, rng):
    x = {"normal": rng.normal(0, 0.02, (16, 4096)), "t3": 0.02 * rng.standard_t(3, (16, 4096))}
    for i, (case, data) in enumerate(x.items()):
        data = data.astype(np.float32)
        c = CODECS[qtype]
        rel = np.linalg.norm(data - c.dequantize(c.quantize(data))) / np.linalg.norm(data)
        assert rel <= 1.03 * GGML_BEST[qtype][i], (case, rel)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_importance_pulls_accuracy_to_the_weighted_columns(qtype, rng):
    x = rng.normal(0, 0.02, (64, 256)).astype(np.float32)
    importance = np.ones_like(x)
    importance[:, ::8] = 100.0  # a few input channels with large activations
    c = CODECS[qtype]
    plain = c.dequantize(c.quantize(x))
    weighted = c.dequantize(c.quantize(x, importance=importance))
    col = np.s_[:, ::8]
    if qtype == T.Q8_0:  # round-to-nearest has no search to weight: identical bytes
        np.testing.assert_array_equal(plain, weighted)
    else:
        assert np.linalg.norm((x - weighted)[col]) < 0.95 * np.linalg.norm((x - plain)[col])


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_chunks_and_threads_do_not_change_the_bytes(qtype, rng, monkeypatch):
    x = rng.normal(0, 1, (8, 1024)).astype(np.float32)
    whole = CODECS[qtype].quantize(x)
    monkeypatch.setattr(type(CODECS[qtype]), "chunk_blocks", 3)
    np.testing.assert_array_equal(CODECS[qtype].quantize(x), whole)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_nan_or_inf_is_a_user_error_naming_the_tensor(qtype, bad, rng):
    x = rng.normal(0, 1, (2, 256)).astype(np.float32)
    x[1, 3] = bad
    with pytest.raises(UserError, match=r"'down.0.weight' has 1 NaN/Inf"):
        CODECS[qtype].quantize(x, name="down.0.weight")


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_bad_shapes_importance_and_ranges_are_user_errors(qtype, rng):
    c = CODECS[qtype]
    with pytest.raises(UserError, match="multiple of"):
        c.quantize(np.zeros((2, 250), np.float32), name="t")
    x = rng.normal(0, 1, (2, 256)).astype(np.float32)
    with pytest.raises(UserError, match="non-negative"):
        c.quantize(x, importance=-np.ones_like(x))
    with pytest.raises(UserError, match="shape"):
        c.quantize(x, importance=np.ones((2, 512), np.float32))
    with pytest.raises(UserError, match="too wide"):
        c.quantize(np.concatenate([np.full(128, -1e9), np.full(128, 1e9)]).astype(np.float32), name="t")
    with pytest.raises(UserError, match="packed data"):
        c.dequantize(np.zeros((2, c.type_size + 1), np.uint8))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_torch_decode_equals_numpy_decode(qtype, device, rng):
    c = CODECS[qtype]
    packed = c.quantize(rng.normal(0, 0.5, (3, 2, 512)).astype(np.float32))
    expected = c.dequantize(packed)
    got = c.dequantize_torch(torch.from_numpy(packed).to(device), chunk_blocks=5).cpu().numpy()
    np.testing.assert_array_equal(_bits(got), _bits(expected))
    half = c.dequantize_torch(torch.from_numpy(packed).to(device), torch.float16).cpu()
    torch.testing.assert_close(half, torch.from_numpy(expected).half())


def test_mixed_file_decodes_like_gguf_and_runs(tmp_path, rng):
    """One file holding every type: gguf-py decodes each tensor as we do, and the layers run."""
    tensors, plans = {}, []
    for i, qtype in enumerate(TYPES):
        name = f"blocks.{i}.proj.weight"
        tensors[name] = torch.from_numpy(rng.normal(0, 0.02, (8, 256)).astype(np.float32))
        plans.append(TensorPlan(name, qtype, (8, 256), None, qtype.name))
    conv = rng.normal(0, 0.02, (32, 8, 3, 3)).astype(np.float32)  # 2304 = 9 rows of 256
    tensors["conv.weight"] = torch.from_numpy(conv.reshape(9, 256))
    plans.append(TensorPlan("conv.weight", T.Q3_K, (9, 256), (32, 8, 3, 3), "reshaped"))
    path = tmp_path / "mixed.gguf"
    records, _ = write_planned_gguf(path, plans, tensors, {}, progress=False)
    assert [r.qtype for r in records] == [p.qtype.name for p in plans]
    summary = summarize_gguf(path)  # what `squeezegen inspect` prints
    assert set(summary["by_type"]) == set(QUANTIZED_TYPES)
    assert summary["by_type"]["Q6_K"]["bytes"] * 8 / summary["by_type"]["Q6_K"]["params"] == 6.5625
    assert "Q2_K" in format_summary(summary) and "2.625 bits/weight" in format_summary(summary)
    ours, _ = read_gguf(path)
    assert ours["conv.weight"].shape == (32, 8, 3, 3) and ours["conv.weight"].qtype == T.Q3_K
    for t in GGUFReader(path).tensors:
        theirs = gguf_dequantize(t.data, t.tensor_type)
        np.testing.assert_array_equal(_bits(ours[t.name].dequantize().reshape(theirs.shape)), _bits(theirs))
    x = torch.from_numpy(rng.normal(0, 1, (5, 256)).astype(np.float32))
    for qtype in TYPES:
        t = ours[f"blocks.{TYPES.index(qtype)}.proj.weight"]
        layer = GGUFLinear(packed=torch.from_numpy(np.array(t.data)), qtype=qtype, weight_shape=t.shape, bias=None)
        expected = x @ torch.from_numpy(t.dequantize()).T
        torch.testing.assert_close(layer(x), expected)


def test_codec_benchmark_script_writes_its_figures(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "kquant_codecs.py"
    spec = importlib.util.spec_from_file_location("kquant_codecs", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "k.json"
    result = bench.main(["--n-weights", "4096", "--repeats", "1", "--out", str(out)])
    written = json.loads(out.read_text())
    assert set(written["types"]) == set(QUANTIZED_TYPES) and result["n_weights"] == 4096
    for name, entry in written["types"].items():
        assert entry["gauss"]["gguf_bit_exact"] and entry["t3"]["gguf_bit_exact"]
        assert entry["tiny_1e-6_rel_rmse"] < 1.0  # better than an all-zero block
        assert written["perf"]["types"][name]["gauss"]["weights_per_s"] > 0  # timings under perf


@pytest.mark.parametrize("unet_type", ["Q2_K", "Q3_K", "Q5_K", "Q6_K"])
def test_unet_file_of_each_type_loads_and_runs_what_the_file_encodes(unet_type, tiny_unet, tmp_path):
    """The policy, writer, reader, loader and layers all take every registered type."""
    from diffusers import UNet2DConditionModel
    from test_quant_runtime import TINY_UNET, rel_err, run

    from squeezegen.quant.gguf.io import summarize_gguf, write_unet_gguf
    from squeezegen.quant.gguf.unet_loader import load_gguf_unet
    from squeezegen.quant.mix.policy import QuantPolicy

    unet, folder, inputs, reference = tiny_unet
    path = tmp_path / "unet.gguf"
    write_unet_gguf(path, unet.state_dict(), policy=QuantPolicy(unet_type=unet_type), progress=False)
    assert unet_type in summarize_gguf(path)["by_type"]
    loaded = load_gguf_unet(path, config=folder)
    tensors, _ = read_gguf(path)
    decoded = UNet2DConditionModel(**TINY_UNET).eval()
    decoded.load_state_dict({
        name: torch.from_numpy(gguf_dequantize(np.array(t.data), t.qtype).reshape(t.shape))
        for name, t in tensors.items()
    })  # fmt: skip
    output = run(loaded, inputs)
    torch.testing.assert_close(output, run(decoded, inputs), rtol=1e-4, atol=1e-5)
    assert rel_err(output, reference) < 1.0
