"""The strict GGUF reader: mutated toy files never hang it, never raise anything but UserError,
and no accepted header mutation changes what is decoded; duplicates and the metadata it relies on;
`squeezegen inspect` on a bad file."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.constants import GGMLQuantizationType as T
from typer.testing import CliRunner

from squeezegen.cli import app
from squeezegen.errors import UserError
from squeezegen.quant.gguf.io import read_gguf, write_unet_gguf
from squeezegen.quant.gguf.unet_loader import check_tensors_match
from squeezegen.quant.mix.policy import QuantPolicy

TOY_SHAPES = {
    "conv_in.weight": (8, 4, 3, 3),  # F16 (kept by name)
    "conv_in.bias": (8,),  # F16
    "down.0.conv1.weight": (32, 32, 3, 3),  # Q4_K as rows of 256, true shape in metadata
    "down.0.proj.weight": (32, 256),  # Q4_K rows
    "down.0.proj.bias": (32,),  # F16
    "down.0.skip.weight": (64, 3, 3, 3),  # Q8_0 as rows of 32 (1728 is no whole Q4_K block)
    "mid.attn.to_q.weight": (40, 96),  # Q4_K as rows of 256
    "conv_out.weight": (4, 8, 3, 3),  # F16
    "conv_out.bias": (4,),  # F16, the last tensor: 8 bytes and 24 of padding
}
KINDS = ("header_byte", "string_length", "count", "offset", "type", "dims", "truncate", "garbage")
CASES_PER_KIND = 250
CASE_SECONDS = 2.0  # per-case bound: the whole toy file is parsed and decoded in milliseconds


@dataclass(frozen=True)
class ToyFile:
    raw: bytes
    fields: dict[str, list[tuple[int, int]]]  # kind of field → (byte position, width)
    data: list[tuple[int, int]]  # [start, end) of each tensor's data
    shapes: dict[str, tuple[int, ...]]
    decoded: dict[str, tuple[T, bytes]]


def _field_map(reader: GGUFReader) -> dict[str, list[tuple[int, int]]]:
    """Where the length, count, type, offset and dims fields of a (valid) file are, from gguf's reader."""
    fields: dict[str, list[tuple[int, int]]] = {"count": [(8, 8), (16, 8)]}  # tensor count, metadata count
    fields.update(string_length=[], type=[], offset=[], rank=[], dims=[])
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        at, spans = field.offset, []
        for part in field.parts:
            spans.append((at, int(part.nbytes)))
            at += int(part.nbytes)
        fields["string_length"].append(spans[0])  # the key's length
        fields["type"].append(spans[2])  # the value type
        if field.types[0] == GGUFValueType.STRING:  # its length
            fields["string_length"].append(spans[3])
        if field.types[0] == GGUFValueType.ARRAY:  # item type, count
            fields["type"].append(spans[3])
            fields["count"].append(spans[4])
    for t in reader.tensors:
        at, spans = t.field.offset, []
        for part in t.field.parts:  # name length, name, rank, dims, type, offset
            spans.append((at, int(part.nbytes)))
            at += int(part.nbytes)
        fields["string_length"].append(spans[0])
        fields["rank"].append(spans[2])
        fields["dims"] += [(spans[3][0] + 8 * i, 8) for i in range(spans[3][1] // 8)]
        fields["type"].append(spans[4])
        fields["offset"].append(spans[5])
    return fields


def _decoded(tensors) -> dict[str, tuple[T, bytes]]:
    return {name: (t.qtype, t.dequantize().tobytes()) for name, t in tensors.items()}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> ToyFile:
    torch.manual_seed(0)
    state = {name: torch.randn(shape) for name, shape in TOY_SHAPES.items()}
    path = tmp_path_factory.mktemp("fuzz") / "toy.gguf"
    metadata = {"base_model": "toy", "steps": 3, "seeds": 1}
    write_unet_gguf(path, state, policy=QuantPolicy(), metadata=metadata, progress=False)
    tensors, _ = read_gguf(path)
    assert {t.qtype for t in tensors.values()} == {T.F16, T.Q4_K, T.Q8_0}
    reader = GGUFReader(path)
    data = [(t.data_offset, t.data_offset + t.n_bytes) for t in reader.tensors]
    shapes = {name: t.shape for name, t in tensors.items()}
    return ToyFile(path.read_bytes(), _field_map(reader), data, shapes, _decoded(tensors))


def _new_value(rng: np.random.Generator, old: int, width: int) -> int:
    """A nearby, extreme or random value for an integer field of `width` bytes."""
    choice = rng.integers(5)
    if choice < 2:
        value = old + int(rng.choice([-1, 1])) * int(rng.integers(1, 65))
    elif choice == 2:
        value = int(rng.choice([0, 1, 2**31, 2 ** (8 * width) - 1, 2 ** (8 * width - 2)]))
    elif choice == 3:
        value = old * 2
    else:
        value = int(rng.integers(0, 2**31))
    return value % 2 ** (8 * width)


def _mutate(rng: np.random.Generator, kind: str, toy: ToyFile) -> bytearray:
    raw = bytearray(toy.raw)
    header_end = toy.data[0][0]
    if kind == "header_byte":
        at = int(rng.integers(header_end))
        raw[at] = (raw[at] ^ (1 << int(rng.integers(8)))) if rng.random() < 0.5 else int(rng.integers(256))
    elif kind == "truncate":
        del raw[int(rng.integers(len(raw))) :]
    elif kind == "garbage":
        junk = rng.integers(0, 256, int(rng.integers(1, 65)), dtype=np.uint8).tobytes()
        if rng.random() < 0.2:
            raw += junk
        else:
            at = int(rng.integers(len(raw) - len(junk) if rng.random() < 0.5 else header_end))
            raw[at : at + len(junk)] = junk
    else:
        if kind == "type" and rng.random() < 0.5:  # a tensor type: any of ggml's, or none of them
            at, width = toy.fields["type"][-int(rng.integers(1, len(TOY_SHAPES) + 1))]
            new = int(rng.choice(list(T))) if rng.random() < 0.7 else int(rng.integers(0, 64))
        else:
            at, width = _pick(rng, toy, kind)
            new = _new_value(rng, int.from_bytes(raw[at : at + width], "little"), width)
        raw[at : at + width] = new.to_bytes(width, "little")
    return raw


def _pick(rng: np.random.Generator, toy: ToyFile, kind: str) -> tuple[int, int]:
    group = str(rng.choice(["rank", "dims"])) if kind == "dims" else kind
    spans = toy.fields[group]
    return spans[int(rng.integers(len(spans)))]


def _touches_data(raw: bytearray, toy: ToyFile) -> bool:
    """Whether a mutation changed (or cut) any byte of tensor data; header and padding are not data."""
    n = min(len(raw), len(toy.raw))
    changed = np.flatnonzero(np.frombuffer(bytes(raw[:n]), np.uint8) != np.frombuffer(toy.raw[:n], np.uint8))
    return len(raw) < toy.data[-1][1] or any(start <= p < end for p in changed for start, end in toy.data)


class _Expected:
    """Stands in for the UNet in `check_tensors_match`: the toy's own names and shapes."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = shapes

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: torch.empty(shape, device="meta") for name, shape in self.shapes.items()}


@pytest.mark.timeout(300)  # a hang fails here; a slow case fails the per-case bound below
def test_fuzzed_files_are_refused_or_decode_as_the_original(toy, tmp_path):
    rng = np.random.default_rng(13)
    outcomes: Counter[tuple[str, str]] = Counter()
    failures, slowest = [], 0.0
    start = time.perf_counter()
    for i in range(len(KINDS) * CASES_PER_KIND):
        kind = KINDS[i % len(KINDS)]
        raw = _mutate(rng, kind, toy)
        while raw == toy.raw:  # e.g. an offset of 0 "doubled": no mutation at all
            raw = _mutate(rng, kind, toy)
        path = tmp_path / f"case{i:03d}.gguf"  # one file each: an accepted file stays memory-mapped
        path.write_bytes(bytes(raw))
        t0 = time.perf_counter()
        try:
            tensors, _ = read_gguf(path)
            with np.errstate(all="ignore"):  # mutated data may hold NaN scales
                decoded = _decoded(tensors)
        except UserError as err:
            outcomes[kind, "refused"] += 1
            assert "\n" not in str(err), (kind, i, str(err))
            continue
        except Exception as err:  # noqa: BLE001 - the point: anything else is a finding
            failures.append((i, kind, repr(err)))
            continue
        finally:
            slowest = max(slowest, time.perf_counter() - t0)
        shapes = {name: t.shape for name, t in tensors.items()}
        if _touches_data(raw, toy):
            outcomes[kind, "accepted: tensor data changed"] += 1
        elif shapes != toy.shapes:  # renamed or reshaped: the UNet loader's key/shape check refuses it
            with pytest.raises(UserError, match="does not match the UNet config"):
                check_tensors_match(path, tensors, _Expected(toy.shapes))
            outcomes[kind, "accepted: renamed/reshaped, loader refuses"] += 1
        else:
            changed = sorted(name for name in decoded if decoded[name] != toy.decoded[name])
            assert not changed, (i, kind, "an accepted header mutation changed what is decoded", changed)
            outcomes[kind, "accepted: decodes as the original"] += 1
    total = time.perf_counter() - start
    print(f"\n{sum(outcomes.values()) + len(failures)} cases in {total:.1f} s (slowest {slowest * 1e3:.0f} ms):")
    for (kind, outcome), n in sorted(outcomes.items()):
        print(f"  {kind:<14} {outcome:<42} {n}")
    assert not failures, failures[:5]
    assert slowest < CASE_SECONDS
    refused = sum(n for (_, outcome), n in outcomes.items() if outcome == "refused")
    assert refused >= 0.6 * len(KINDS) * CASES_PER_KIND  # the mutations reach the checks


def test_duplicate_tensor_names_and_metadata_keys_are_refused(toy, tmp_path):
    bad = tmp_path / "bad.gguf"
    for old, new, message in [
        (b"down.0.skip.weight", b"down.0.proj.weight", "tensor 'down.0.proj.weight' at byte .* repeats the one"),
        (b"squeezegen.seeds", b"squeezegen.steps", "metadata key 'squeezegen.steps' at byte .* repeats"),
        (b"general.architecture", b"general.architecturf", "'general.architecture' is missing"),
    ]:
        at = toy.raw.rindex(old)
        bad.write_bytes(toy.raw[:at] + new + toy.raw[at + len(old) :])
        with pytest.raises(UserError, match=message):
            read_gguf(bad)


@pytest.mark.parametrize(
    ("key", "value", "vtype", "message"),
    [
        ("general.alignment", 32, GGUFValueType.INT32, "'general.alignment' at byte .* is INT32, not UINT32"),
        ("general.alignment", 48, GGUFValueType.UINT32, "is 48, not a power of two"),
        ("general.architecture", 1, GGUFValueType.UINT32, "'general.architecture' at byte .* is UINT32, not a string"),
        ("squeezegen.key_format", 1, GGUFValueType.BOOL, "'squeezegen.key_format' at byte .* is BOOL"),
        ("squeezegen.policy", 7, GGUFValueType.INT64, "'squeezegen.policy' at byte .* is INT64, not a string"),
        ("squeezegen.policy", '{"unet_type": "Q3"}', GGUFValueType.STRING, "is not a tensor policy"),
        ("squeezegen.policy", '{"colour": 1}', GGUFValueType.STRING, "is not a tensor policy"),
        ("comfy.gguf.orig_shape.w", "(32,)", GGUFValueType.STRING, "'comfy.gguf.orig_shape.w' .* not an array of int"),
        ("comfy.gguf.orig_shape.v", [32], GGUFValueType.ARRAY, "records a shape for a tensor the file does not hold"),
        ("comfy.gguf.orig_shape.w", [0, 32], GGUFValueType.ARRAY, r"is \(0, 32\), not 1 to 4 positive sizes"),
        ("comfy.gguf.orig_shape.w", [2, 16], GGUFValueType.ARRAY, None),  # well-formed: taken
    ],
)
def test_metadata_the_reader_relies_on_has_the_right_types(tmp_path, key, value, vtype, message):
    path = tmp_path / "meta.gguf"
    writer = GGUFWriter(path, arch="sd1")
    writer.add_key_value("squeezegen.key_format", "diffusers", GGUFValueType.STRING)
    writer.add_key_value(key, value, vtype, GGUFValueType.INT32 if vtype == GGUFValueType.ARRAY else None)
    writer.add_tensor("w", np.zeros(32, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if message is None:
        assert read_gguf(path)[0]["w"].shape == (2, 16)
        return
    with pytest.raises(UserError, match=message):
        read_gguf(path)


def test_inspect_on_a_corrupt_file_prints_one_line_and_exits_2(toy, tmp_path):
    bad = tmp_path / "corrupt.gguf"
    raw = bytearray(toy.raw)
    name_at = toy.fields["string_length"][-1][0] + 8  # the last tensor's name
    raw[name_at] = 0x1B  # ESC
    raw[name_at + 1] = 0xFF  # not UTF-8
    bad.write_bytes(bytes(raw))
    result = CliRunner().invoke(app, ["inspect", str(bad)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "is not UTF-8: b'\\x1b\\xff" in lines[0]
    assert "Traceback" not in result.output and "\x1b" not in result.output


@pytest.mark.parametrize(("name", "message"), [("missing.gguf", "does not exist"), (".", "is a folder")])
def test_inspect_on_a_missing_file_or_folder_prints_one_line(tmp_path, name, message):
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / name)])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0 and message in result.output
