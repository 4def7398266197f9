"""GGUF side of the compressed UNet: tensor policy, writer, reader, inspect summary, bad files."""

from __future__ import annotations

import json
import math
import re
import struct

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from gguf import GGUFReader
from gguf import quants as gguf_quants
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as T

from squeezegen.errors import ConfigError, UserError
from squeezegen.quant.gguf.check import SUPPORTED_TYPES
from squeezegen.quant.gguf.io import encode_array, format_summary, read_gguf, summarize_gguf, write_unet_gguf
from squeezegen.quant.gguf.layers import dequantize_torch
from squeezegen.quant.mix.policy import QuantPolicy, choose_type

TINY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=256,  # attn2.to_k / to_v have 256 inputs: whole Q4_K rows
    sample_size=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=8,
    norm_num_groups=32,
)
CONV3 = "down_blocks.0.resnets.0.conv1.weight"  # (32, 32, 3, 3)
TO_K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"  # (32, 256)


@pytest.fixture(scope="module")
def tiny_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_UNET).state_dict()


@pytest.fixture(scope="module")
def q4k_file(tmp_path_factory, tiny_state_dict):
    path = tmp_path_factory.mktemp("gguf") / "unet.gguf"
    metadata = {"base_model": "tiny-sd", "lora_sha256": "ab" * 32, "steps": 3}
    report = write_unet_gguf(path, tiny_state_dict, policy=QuantPolicy(), metadata=metadata, progress=False)
    return path, report


# --- policy -----------------------------------------------------------------------------------


def test_policy_keeps_embeddings_io_convs_norms_and_biases(tiny_state_dict):
    policy = QuantPolicy()
    plans = {name: choose_type(name, t.shape, policy) for name, t in tiny_state_dict.items()}
    for name, plan in plans.items():
        kept = (
            name.startswith(("time_embedding.", "conv_in.", "conv_out."))
            or "norm" in name
            or name.endswith(".bias")
            or math.prod(tiny_state_dict[name].shape) <= policy.min_elements
        )
        assert (plan.qtype == T.F16) == kept, (name, plan)
    assert plans["time_embedding.linear_2.weight"].qtype == T.F16  # 128×128 would fit Q4_K otherwise


def test_policy_reshapes_convs_into_rows_and_records_shape(tiny_state_dict):
    plan = choose_type(CONV3, tiny_state_dict[CONV3].shape, QuantPolicy())
    assert plan.qtype == T.Q4_K
    assert plan.stored_shape == (32 * 32 * 9 // 256, 256) and plan.orig_shape == (32, 32, 3, 3)
    linear = choose_type(TO_K, tiny_state_dict[TO_K].shape, QuantPolicy())
    assert (linear.qtype, linear.stored_shape, linear.orig_shape) == (T.Q4_K, (32, 256), None)
    assert plan.nbytes == plan.n_params // 256 * GGML_QUANT_SIZES[T.Q4_K][1]


@pytest.mark.parametrize(
    ("shape", "policy", "expected"),
    [
        ((64, 3, 3, 3), QuantPolicy(), (T.Q8_0, (54, 32), (64, 3, 3, 3))),  # 1728: rows of 32, not 256
        ((36, 96), QuantPolicy(), (T.Q8_0, (36, 96), None)),  # 3456 elements, rows of 96
        ((40, 27), QuantPolicy(), (T.F16, (40, 27), None)),  # 1080: no whole blocks at all
        ((64, 3, 3, 3), QuantPolicy(fallback_type="F32"), (T.F32, (64, 3, 3, 3), None)),
        ((32, 32, 3, 3), QuantPolicy(reshape_convs=False), (T.F16, (32, 32, 3, 3), None)),
        ((40, 96), QuantPolicy(reshape_convs=False), (T.Q8_0, (40, 96), None)),
        ((40, 96), QuantPolicy(), (T.Q4_K, (15, 256), (40, 96))),
        ((32, 32, 3, 3), QuantPolicy(unet_type="Q8_0"), (T.Q8_0, (288, 32), (32, 32, 3, 3))),
        ((32, 32, 3, 3), QuantPolicy(unet_type="F16"), (T.F16, (32, 32, 3, 3), None)),
        ((32, 32), QuantPolicy(min_elements=0), (T.Q4_K, (4, 256), (32, 32))),
        ((32, 32), QuantPolicy(), (T.F16, (32, 32), None)),  # 1024 elements: at the size limit
        ((512,), QuantPolicy(keep_type="F32"), (T.F32, (512,), None)),
    ],
)
def test_policy_fallbacks(shape, policy, expected):
    plan = choose_type("down_blocks.1.some.weight", shape, policy)
    assert (plan.qtype, plan.stored_shape, plan.orig_shape) == expected
    assert math.prod(plan.stored_shape) == math.prod(shape)


@pytest.mark.parametrize(
    "kwargs", [{"unet_type": "Q4_0"}, {"fallback_type": "Q4_K"}, {"keep_type": "Q8_0"}, {"keep_patterns": ("(",)}]
)
def test_policy_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        QuantPolicy(**kwargs)


def test_policy_on_sd15_architecture_meets_size_targets():
    """SD 1.5's UNet (built on the meta device, no weights): ≥95% of params Q4_K, ≤0.55 GB."""
    with init_empty_weights():
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    plans = [choose_type(name, t.shape, QuantPolicy()) for name, t in unet.state_dict().items()]
    n_params = sum(p.n_params for p in plans)
    q4k = sum(p.n_params for p in plans if p.qtype == T.Q4_K)
    assert q4k / n_params >= 0.95
    assert sum(p.nbytes for p in plans) <= 0.55e9
    assert all(p.qtype == T.F16 for p in plans if p.name.startswith("time_embedding."))


# --- writer and reader --------------------------------------------------------------------------


def test_round_trip_decodes_identically_with_gguf(q4k_file, tiny_state_dict):
    path, report = q4k_file
    tensors, _ = read_gguf(path)
    assert list(tensors) == list(tiny_state_dict)
    records = {r.name: r for r in report.tensors}
    for name, original in tiny_state_dict.items():
        t = tensors[name]
        assert t.shape == tuple(original.shape)
        assert t.qtype.name == records[name].qtype
        oracle = gguf_quants.dequantize(np.array(t.data), t.qtype).reshape(t.shape)  # the format oracle
        ours = dequantize_torch(torch.from_numpy(np.array(t.data)), t.qtype, t.shape, torch.float32)
        np.testing.assert_array_equal(ours.numpy(), oracle)
        x = original.numpy()
        err, norm = np.linalg.norm(x - oracle), np.linalg.norm(x)
        rel = err / norm if norm > 0 else err  # zero-initialised biases
        assert rel == pytest.approx(records[name].rel_rmse, rel=1e-4, abs=1e-7)
        assert rel < (0.12 if t.quantized else 1e-3), name


def test_file_follows_comfy_conventions_read_by_plain_gguf_reader(q4k_file, tiny_state_dict):
    path, _ = q4k_file
    reader = GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    conv = by_name[CONV3]
    assert conv.tensor_type == T.Q4_K and list(conv.shape) == [256, 36]  # ggml order: rows of 256
    field = reader.get_field(f"comfy.gguf.orig_shape.{CONV3}")
    assert field.contents() == [32, 32, 3, 3]
    assert reader.get_field("general.architecture").contents() == "sd1"
    assert reader.get_field(f"comfy.gguf.orig_shape.{TO_K}") is None


def test_metadata_present(q4k_file):
    path, _ = q4k_file
    _, metadata = read_gguf(path)
    assert metadata["squeezegen.base_model"] == "tiny-sd"
    assert metadata["squeezegen.lora_sha256"] == "ab" * 32
    assert metadata["squeezegen.steps"] == 3
    assert metadata["squeezegen.key_format"] == "diffusers"
    assert QuantPolicy(**json.loads(metadata["squeezegen.policy"])) == QuantPolicy()
    assert not any(key.startswith("comfy.gguf.orig_shape.") for key in metadata)


def test_reserved_metadata_keys_are_refused(tmp_path, tiny_state_dict):
    with pytest.raises(ValueError, match="policy"):
        write_unet_gguf(tmp_path / "x.gguf", tiny_state_dict, metadata={"policy": "mine"}, progress=False)
    assert not (tmp_path / "x.gguf").exists()


def test_report_totals_and_manifest(q4k_file, tiny_state_dict):
    path, report = q4k_file
    n_params = sum(t.numel() for t in tiny_state_dict.values())
    assert report.n_params == n_params and report.bytes_fp16 == 2 * n_params
    assert report.bytes_gguf == path.stat().st_size
    assert report.bytes_tensors < report.bytes_gguf < report.bytes_fp16
    assert 4.5 < report.bpw < 16
    q4k_params = sum(r.n_params for r in report.tensors if r.qtype == "Q4_K")
    assert report.q4k_fraction == pytest.approx(q4k_params / n_params)
    assert 0 < report.rel_rmse_mean <= report.rel_rmse_max < 0.12
    manifest = report.manifest()
    assert set(manifest["tensors"]) == set(tiny_state_dict)
    assert sum(t["bytes"] for t in manifest["tensors"].values()) == report.bytes_tensors
    assert manifest["tensors"][CONV3] == {**manifest["tensors"][CONV3], "type": "Q4_K", "shape": [32, 32, 3, 3]}
    json.dumps(manifest, allow_nan=False)  # goes to manifest.json as is


def test_summary_matches_report(q4k_file):
    path, report = q4k_file
    summary = summarize_gguf(path)
    assert summary["n_params"] == report.n_params
    assert summary["by_type"] == report.counts_by_type()
    assert summary["bits_per_weight"] == pytest.approx(report.bpw)
    assert 4.5 < summary["bits_per_weight"] < 16
    text = format_summary(summary, max_tensors=3)
    assert "Q4_K" in text and "squeezegen.base_model = tiny-sd" in text and "more tensors" in text


def test_f16_policy_stores_exact_half_precision(tmp_path, tiny_state_dict):
    path = tmp_path / "f16.gguf"
    report = write_unet_gguf(path, tiny_state_dict, policy=QuantPolicy(unet_type="F16"), progress=False)
    assert report.q4k_fraction == 0 and report.bpw == 16
    tensors, _ = read_gguf(path)
    np.testing.assert_array_equal(tensors[CONV3].data, tiny_state_dict[CONV3].half().numpy())


# --- bad files -----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_truncated_files_are_refused(q4k_file, tmp_path):
    path, _ = q4k_file
    raw = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    for size in (0, 3, 16, 40, 300, len(raw) // 3, len(raw) // 2, len(raw) - 200):
        cut.write_bytes(raw[:size])
        with pytest.raises(UserError, match="GGUF"):
            read_gguf(cut)


@pytest.mark.timeout(60)
def test_garbage_wrong_magic_and_missing_files_are_refused(q4k_file, tmp_path):
    path, _ = q4k_file
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match="not a GGUF file"):
        read_gguf(bad)
    bad.write_bytes(b"GGML" + path.read_bytes()[4:])
    with pytest.raises(UserError, match="not a GGUF file"):
        read_gguf(bad)
    with pytest.raises(UserError, match="does not exist"):
        read_gguf(tmp_path / "absent.gguf")


@pytest.mark.timeout(30)
def test_corrupt_array_length_fails_fast(q4k_file, tmp_path):
    """gguf's reader would loop ~2^60 times over a corrupt array length; we refuse at once."""
    path, _ = q4k_file
    raw = bytearray(path.read_bytes())
    key = f"comfy.gguf.orig_shape.{CONV3}".encode()
    at = raw.index(key) + len(key) + 4 + 4  # skip value type (ARRAY) and item type (INT32)
    assert struct.unpack_from("<Q", raw, at)[0] == 4
    struct.pack_into("<Q", raw, at, 1 << 60)
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="not a complete GGUF file"):
        read_gguf(bad)


# --- what a strict reader refuses (ggml's own checks) ---------------------------------------------


def _info_fields(raw: bytes, name: str) -> dict[str, int]:
    """Byte positions of one tensor info's fields in a little-endian file written by our writer."""
    key = name.encode()
    at = raw.rindex(struct.pack("<Q", len(key)) + key)  # tensor infos follow the metadata
    rank = at + 8 + len(key)
    type_at = rank + 4 + 8 * struct.unpack_from("<I", raw, rank)[0]
    return {"info": at, "name": at + 8, "rank": rank, "dims": rank + 4, "type": type_at, "offset": type_at + 4}


def _corrupted(path, tmp_path, edit):
    """A copy of `path` after `edit(bytearray)`."""
    raw = bytearray(path.read_bytes())
    edit(raw)
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(bytes(raw))
    return bad


def test_non_utf8_strings_raise_user_error_not_buffer_error(q4k_file, tmp_path):
    """Finding (a): a non-UTF-8 string raised BufferError (a memoryview outlived the mmap)."""
    path, _ = q4k_file
    raw = path.read_bytes()
    name_at = _info_fields(raw, TO_K)["name"]
    value_at = raw.index(b"tiny-sd")  # the squeezegen.base_model value
    key_at = raw.index(b"squeezegen.steps")
    for at in (name_at, value_at, key_at):
        bad = _corrupted(path, tmp_path, lambda b: b.__setitem__(at, 0xFF))
        with pytest.raises(UserError, match=rf"at byte {at - 8} is not UTF-8: b'\\xff"):
            read_gguf(bad)


def test_moved_offsets_and_retyped_biases_are_refused(q4k_file, tmp_path):
    """Finding (b): offsets were only checked to lie inside the file, so gguf's reader (and ours)
    read another tensor's bytes; ggml requires each offset to be the running aligned total."""
    path, _ = q4k_file
    fields = _info_fields(path.read_bytes(), TO_K)

    def move(raw):
        struct.pack_into("<Q", raw, fields["offset"], struct.unpack_from("<Q", raw, fields["offset"])[0] + 32)

    bad = _corrupted(path, tmp_path, move)
    assert {t.name for t in GGUFReader(bad).tensors} >= {TO_K}  # gguf's own reader takes it
    where = rf"tensor '{re.escape(TO_K)}' \(info at byte {fields['info']}\)"
    with pytest.raises(UserError, match=where + " has data offset"):
        read_gguf(bad)

    bias = _info_fields(path.read_bytes(), "conv_in.bias")
    assert path.read_bytes()[bias["type"]] == T.F16
    bad = _corrupted(path, tmp_path, lambda raw: raw.__setitem__(bias["type"], T.F32))
    with pytest.raises(UserError, match="has data offset .* or tensor .conv_in.bias. before it has the wrong type"):
        read_gguf(bad)


@pytest.mark.parametrize(("name", "qtype"), [(TO_K, T.BF16), ("conv_in.bias", T.Q5_0), (CONV3, T.Q4_0)])
def test_types_the_runtime_cannot_decode_are_refused(q4k_file, tmp_path, name, qtype):
    """Finding (c): a Q4_K weight retyped BF16 failed at the first forward, a bias retyped Q5_0
    decoded to garbage; Q4_0 even has Q4_K's size (144 bytes per 256 weights)."""
    path, _ = q4k_file
    at = _info_fields(path.read_bytes(), name)["type"]
    bad = _corrupted(path, tmp_path, lambda raw: struct.pack_into("<I", raw, at, qtype))
    with pytest.raises(UserError, match=rf"has type {qtype.name}, which squeezegen does not decode \(F16, F32"):
        read_gguf(bad)


def test_every_type_the_reader_accepts_is_one_the_runtime_decodes():
    """The reader asks the policy's type lists; the runtime must decode each of them."""
    x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    for qtype in SUPPORTED_TYPES:
        data = encode_array(x, qtype)
        decoded = dequantize_torch(torch.from_numpy(np.ascontiguousarray(data)), qtype, x.shape, torch.float32)
        rel = np.linalg.norm(decoded.numpy() - x) / np.linalg.norm(x)
        assert rel < 0.35, (qtype.name, rel)  # Q2_K, the coarsest, is ≈0.27 on Gaussian weights


def test_error_messages_escape_control_bytes(q4k_file, tmp_path):
    """Finding (d): corrupted names reached the terminal as raw control bytes."""
    path, _ = q4k_file
    fields = _info_fields(path.read_bytes(), TO_K)

    def edit(raw):
        raw[fields["name"]] = 0x1B  # ESC: would start a terminal escape sequence
        raw[fields["name"] + 1] = ord("\n")
        struct.pack_into("<I", raw, fields["type"], T.BF16)

    bad = _corrupted(path, tmp_path, edit)
    with pytest.raises(UserError) as err:
        read_gguf(bad)
    message = str(err.value)
    assert "'\\x1b\\n" in message and "\x1b" not in message and "\n" not in message


def test_policy_check_refuses_types_the_stored_policy_would_not_choose(q4k_file, tmp_path):
    path, _ = q4k_file
    at = path.read_bytes().index(b'"unet_type": "Q4_K"')  # in the squeezegen.policy JSON
    bad = _corrupted(path, tmp_path, lambda b: b.__setitem__(slice(at, at + 19), b'"unet_type": "Q8_0"'))
    with pytest.raises(UserError, match="is stored as Q4_K .* but the file's policy stores it as Q8_0"):
        read_gguf(bad)


def test_structural_facts_ggml_checks(q4k_file, tmp_path):
    """Rank, dims, element counts of recorded shapes, padding and the file's end, one by one."""
    path, _ = q4k_file
    raw = path.read_bytes()
    to_k, conv = _info_fields(raw, TO_K), _info_fields(raw, CONV3)
    shape_key = f"comfy.gguf.orig_shape.{CONV3}".encode()
    shape_at = raw.index(shape_key) + len(shape_key)  # value type, item type, count, items
    cases = [
        (lambda b: struct.pack_into("<I", b, to_k["rank"], 0), "has rank 0"),
        (lambda b: struct.pack_into("<I", b, to_k["rank"], 5), "has rank 5"),
        (lambda b: struct.pack_into("<Q", b, to_k["dims"] + 8, 0), "dims must be positive"),
        (lambda b: struct.pack_into("<Q", b, conv["dims"] + 8, 1 << 62), "product below 2"),
        (lambda b: struct.pack_into("<Q", b, to_k["dims"], 100), "not whole Q4_K blocks"),
        (lambda b: struct.pack_into("<i", b, shape_at + 16, 4), r"says \(4, 32, 3, 3\), but .* has 9216 elements"),
        (lambda b: struct.pack_into("<I", b, shape_at + 4, 6), "is not an array of integers"),  # FLOAT32
        (lambda b: b.extend(b"\0" * 32), "the file has .* bytes, but its last tensor"),
        (lambda b: b.__setitem__(len(b) - 1, 1), "padding after tensor 'conv_out.bias'"),
    ]
    for edit, message in cases:
        bad = _corrupted(path, tmp_path, edit)
        with pytest.raises(UserError, match=message):
            read_gguf(bad)
