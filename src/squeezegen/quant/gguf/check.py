"""Check a GGUF file's structure, as strictly as ggml's `gguf_init_from_file`, before anything reads it.

GGUFReader trusts every length and offset in a file: a corrupt array length makes it loop up to
2^64 times, an offset moved by a few bytes makes a tensor read its neighbour's bytes, a retyped
tensor decodes to garbage. This walk reads the header, metadata and tensor infos with plain
file reads (no memory map, so no buffer can outlive the file) and checks what ggml checks, and
what our runtime relies on:

- lengths and counts against the bytes that remain (so the walk cannot run away);
- keys and tensor names non-empty, unique, valid UTF-8; string values valid UTF-8;
- each tensor: 1..4 positive dims, rows of whole blocks, a type our runtime decodes, and its
  data offset equal to the running aligned total of the sizes before it (ggml's rule); the
  padding after each tensor all zeros and the file ending where the last tensor (or its
  padding) ends;
- the metadata we use: `general.architecture` a string, `general.alignment` a UINT32 power of
  two, `comfy.gguf.orig_shape.<name>` an array of 1..4 positive ints for a tensor of that
  many elements, `squeezegen.policy` a policy, and every tensor typed as that policy chooses
  (for the diffusers name of the tensor: LDM names are mapped back first).

Every problem is one UserError (one line) naming the file, the tensor or field, and the byte
offset; names are printed with `!r`, so control bytes show as escapes.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType

from squeezegen.errors import ConfigError, UserError
from squeezegen.quant.gguf.ldm_names import KEY_FORMATS, unet_ldm_to_diffusers
from squeezegen.quant.mix.policy import FLOAT_TYPES, QUANTIZED_TYPES, QuantPolicy, choose_type

# The types the policy can choose are the types our writer writes and our runtime decodes.
SUPPORTED_TYPES = frozenset(GGMLQuantizationType[name] for name in FLOAT_TYPES + QUANTIZED_TYPES)
ORIG_SHAPE_PREFIX = "comfy.gguf.orig_shape."
POLICY_KEY = "squeezegen.policy"
KEY_FORMAT_KEY = "squeezegen.key_format"

_MAX_DIMS = 4  # GGML_MAX_DIMS in ggml.h
_SUPPORTED_VERSIONS = (2, 3)
_MAX_STRING = 1 << 24  # 16 MiB: far above any key, name or value our files hold
_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}  # fmt: skip
_INT_TYPES = frozenset(t for t, fmt in _SCALAR_FORMATS.items() if fmt in "BbHhIiQq")
_KEEP_ARRAY_ITEMS = 16  # arrays longer than this are checked, not kept (we only use shapes)
_FIX = "Re-create the file (the quantize stage writes it), or use the original."


@dataclass(frozen=True)
class MetaEntry:
    """One metadata entry: its type (item type for arrays), value (None for long arrays), where it starts."""

    vtype: GGUFValueType
    item_type: GGUFValueType | None
    value: Any
    at: int


@dataclass(frozen=True)
class TensorInfo:
    """One tensor info, checked. dims: ggml order; offset: absolute byte of its data; at: byte of its info."""

    name: str
    qtype: GGMLQuantizationType
    dims: tuple[int, ...]
    offset: int
    nbytes: int
    at: int

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """The stored shape in torch order."""
        return tuple(reversed(self.dims))


@dataclass(frozen=True)
class GGUFLayout:
    """What the walk found: the metadata entries, the tensors in file order and their true shapes."""

    metadata: dict[str, MetaEntry]
    tensors: tuple[TensorInfo, ...]
    shapes: dict[str, tuple[int, ...]]  # true shape (torch order), orig_shape applied
    data_start: int


def _invalid(path: Path, what: str) -> UserError:
    return UserError(f"{path} is not a valid GGUF file: {what}. {_FIX}")


class _Cursor:
    """Reads fields from an open file, refusing to run past its end; every read returns a copy."""

    def __init__(self, f: BinaryIO, size: int, path: Path) -> None:
        self.f, self.size, self.path, self.order, self.pos = f, size, path, "<", 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise UserError(
                f"{self.path} is not a complete GGUF file: {what} at byte {self.pos} needs {n} bytes but the "
                f"file ends at byte {self.size} (truncated or corrupt). {_FIX}"
            )
        self.f.seek(self.pos)
        data = self.f.read(n)
        self.pos += n
        return data

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(self.order + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        at = self.pos
        length = self.unpack("Q", f"length of {what}")
        if length > _MAX_STRING:
            raise _invalid(self.path, f"{what} at byte {at} claims {length} bytes (more than {_MAX_STRING})")
        raw = self.take(length, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid(self.path, f"{what} at byte {at} is not UTF-8: {raw[:64]!r}") from None

    def value_type(self, what: str) -> GGUFValueType:
        at = self.pos
        raw = self.unpack("I", f"type of {what}")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise _invalid(self.path, f"{what} at byte {at} has unknown value type {raw}") from None


def _read_value(cursor: _Cursor, key: str, at: int) -> MetaEntry:
    """One metadata value (after its key). Nested arrays are refused, as ggml does."""
    what = f"metadata {key!r}"
    vtype = cursor.value_type(what)
    if vtype == GGUFValueType.STRING:
        return MetaEntry(vtype, None, cursor.string(what), at)
    if vtype != GGUFValueType.ARRAY:
        return MetaEntry(vtype, None, cursor.unpack(_SCALAR_FORMATS[vtype], what), at)
    item_type = cursor.value_type(f"items of {what}")
    count = cursor.unpack("Q", f"length of {what}")
    if item_type == GGUFValueType.ARRAY:
        raise _invalid(cursor.path, f"{what} at byte {at} is an array of arrays")
    if item_type == GGUFValueType.STRING:
        if count * 8 > cursor.size - cursor.pos:  # each string has at least its 8-byte length
            raise _invalid(cursor.path, f"{what} at byte {at} claims {count} strings, more than the file holds")
        for i in range(count):
            cursor.string(f"item {i} of {what}")
        return MetaEntry(vtype, item_type, None, at)
    fmt = _SCALAR_FORMATS[item_type]
    raw = cursor.take(count * struct.calcsize(fmt), what)
    value = list(struct.unpack(f"{cursor.order}{count}{fmt}", raw)) if count <= _KEEP_ARRAY_ITEMS else None
    return MetaEntry(vtype, item_type, value, at)


def _read_metadata(cursor: _Cursor, n_kv: int) -> dict[str, MetaEntry]:
    metadata: dict[str, MetaEntry] = {}
    for i in range(n_kv):  # every entry consumes >= 12 bytes, so this ends at EOF at worst
        at = cursor.pos
        key = cursor.string(f"metadata key #{i}")
        if not key:
            raise _invalid(cursor.path, f"metadata key #{i} at byte {at} is empty")
        if key in metadata:
            raise _invalid(cursor.path, f"metadata key {key!r} at byte {at} repeats the one at byte {metadata[key].at}")
        metadata[key] = _read_value(cursor, key, at)
    return metadata


def _alignment(path: Path, metadata: dict[str, MetaEntry]) -> int:
    entry = metadata.get("general.alignment")
    if entry is None:
        return GGUF_DEFAULT_ALIGNMENT
    if entry.vtype != GGUFValueType.UINT32:
        raise _invalid(path, f"'general.alignment' at byte {entry.at} is {entry.vtype.name}, not UINT32")
    if entry.value <= 0 or entry.value & (entry.value - 1):
        raise _invalid(path, f"'general.alignment' at byte {entry.at} is {entry.value}, not a power of two")
    return entry.value


def _read_tensor_info(cursor: _Cursor, i: int, names: dict[str, int]) -> tuple:
    """(name, type, dims in ggml order, data offset from the data start, byte of the info) of tensor #i."""
    at = cursor.pos
    name = cursor.string(f"tensor name #{i}")
    if not name:
        raise _invalid(cursor.path, f"tensor name #{i} at byte {at} is empty")
    if name in names:
        raise _invalid(cursor.path, f"tensor {name!r} at byte {at} repeats the one at byte {names[name]}")
    names[name] = at
    where = f"tensor {name!r} (info at byte {at})"
    n_dims = cursor.unpack("I", f"rank of {where}")
    if not 1 <= n_dims <= _MAX_DIMS:
        raise _invalid(cursor.path, f"{where} has rank {n_dims}, not 1 to {_MAX_DIMS}")
    dims = tuple(cursor.unpack("Q", f"shape of {where}") for _ in range(n_dims))
    if min(dims) <= 0 or math.prod(dims) >= 1 << 63:
        raise _invalid(cursor.path, f"{where} has shape {dims}: dims must be positive and their product below 2^63")
    raw_type = cursor.unpack("I", f"type of {where}")
    try:
        qtype = GGMLQuantizationType(raw_type)
    except ValueError:
        raise _invalid(cursor.path, f"{where} has unknown type {raw_type}") from None
    if qtype not in SUPPORTED_TYPES:
        supported = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
        raise _invalid(cursor.path, f"{where} has type {qtype.name}, which squeezegen does not decode ({supported})")
    block = GGML_QUANT_SIZES[qtype][0]
    if dims[0] % block:
        raise _invalid(cursor.path, f"{where} has rows of {dims[0]}, not whole {qtype.name} blocks of {block}")
    offset = cursor.unpack("Q", f"offset of {where}")
    return name, qtype, dims, offset, at


def _check_padding(cursor: _Cursor, start: int, end: int, after: str) -> None:
    cursor.pos = start
    pad = cursor.take(min(end, cursor.size) - start, f"padding after {after}")
    if pad.strip(b"\0"):
        raise _invalid(cursor.path, f"the padding after {after} (bytes {start} to {end}) is not all zeros")


def _read_tensors(cursor: _Cursor, n_tensors: int, alignment: int) -> tuple[tuple[TensorInfo, ...], int]:
    """The tensor infos, each at the running aligned offset ggml requires; and the data start."""
    names: dict[str, int] = {}
    raw = [_read_tensor_info(cursor, i, names) for i in range(n_tensors)]
    header_end = cursor.pos
    data_start = -(-header_end // alignment) * alignment
    _check_padding(cursor, header_end, data_start, "the tensor infos")
    tensors, expected = [], 0
    for name, qtype, dims, offset, at in raw:
        block, type_size = GGML_QUANT_SIZES[qtype]
        nbytes = math.prod(dims) // block * type_size
        if offset != expected:  # ggml's rule: a moved offset, or a wrong size (type, dims) before it
            before = f"; or tensor {tensors[-1].name!r} before it has the wrong type or shape" if tensors else ""
            raise _invalid(
                cursor.path, f"tensor {name!r} (info at byte {at}) has data offset {offset}, but the tensors "
                f"before it end at {expected}: its offset is wrong{before}"
            )
        tensors.append(TensorInfo(name, qtype, dims, data_start + offset, nbytes, at))
        expected = offset + -(-nbytes // alignment) * alignment
    if tensors:
        last = tensors[-1]
        end = last.offset + last.nbytes
        if end > cursor.size:
            raise UserError(
                f"{cursor.path} is not a complete GGUF file: tensor {last.name!r} (info at byte {last.at}) needs "
                f"bytes up to {end} but the file has {cursor.size} (truncated). {_FIX}"
            )
        if cursor.size not in (end, data_start + expected):
            raise _invalid(
                cursor.path, f"the file has {cursor.size} bytes, but its last tensor {last.name!r} (info at "
                f"byte {last.at}) ends at byte {end} (padded: {data_start + expected})"
            )
        for t in tensors:
            padded = t.offset + -(-t.nbytes // alignment) * alignment
            _check_padding(cursor, t.offset + t.nbytes, padded, f"tensor {t.name!r} (info at byte {t.at})")
    return tuple(tensors), data_start


def _true_shapes(path: Path, metadata: dict[str, MetaEntry], tensors: tuple[TensorInfo, ...]) -> dict[str, tuple]:
    """Each tensor's true shape (torch order): `comfy.gguf.orig_shape.<name>` where recorded, else as stored."""
    by_name = {t.name: t for t in tensors}
    shapes = {t.name: t.stored_shape for t in tensors}
    for key, entry in metadata.items():
        if not key.startswith(ORIG_SHAPE_PREFIX):
            continue
        name = key[len(ORIG_SHAPE_PREFIX) :]
        where = f"metadata {key!r} at byte {entry.at}"
        if entry.vtype != GGUFValueType.ARRAY or entry.item_type not in _INT_TYPES:
            raise _invalid(path, f"{where} is not an array of integers")
        shape = tuple(entry.value or ())  # None: longer than any shape
        if not 1 <= len(shape) <= _MAX_DIMS or min(shape) <= 0:
            raise _invalid(path, f"{where} is {shape}, not 1 to {_MAX_DIMS} positive sizes")
        if name not in by_name:
            raise _invalid(path, f"{where} records a shape for a tensor the file does not hold")
        t, n_elements = by_name[name], math.prod(by_name[name].dims)
        if math.prod(shape) != n_elements:
            raise _invalid(
                path, f"{where} says {shape}, but tensor {name!r} (info at byte {t.at}) has {n_elements} elements"
            )
        shapes[name] = shape
    return shapes


def _string_entry(path: Path, metadata: dict[str, MetaEntry], key: str, *, required: bool) -> str | None:
    entry = metadata.get(key)
    if entry is None:
        if required:
            raise _invalid(path, f"metadata {key!r} is missing")
        return None
    if entry.vtype != GGUFValueType.STRING:
        raise _invalid(path, f"metadata {key!r} at byte {entry.at} is {entry.vtype.name}, not a string")
    return entry.value


def _check_policy(path: Path, layout: GGUFLayout) -> None:
    """Every tensor has the type and stored shape the file's own `squeezegen.policy` chooses for it."""
    text = _string_entry(path, layout.metadata, POLICY_KEY, required=False)
    key_format = _string_entry(path, layout.metadata, KEY_FORMAT_KEY, required=False)
    if text is None or key_format is None:  # not written by squeezegen: nothing to hold it to
        return
    at = layout.metadata[POLICY_KEY].at
    if key_format not in KEY_FORMATS:
        where = f"metadata {KEY_FORMAT_KEY!r} at byte {layout.metadata[KEY_FORMAT_KEY].at}"
        raise _invalid(path, f"{where} is {key_format!r}, not one of {', '.join(KEY_FORMATS)}")
    # The policy's patterns are written for diffusers names: map LDM names back before choosing.
    policy_name = {t.name: t.name for t in layout.tensors}
    if key_format == "ldm":
        try:
            policy_name = unet_ldm_to_diffusers(policy_name)
        except UserError as err:
            raise _invalid(path, f"its tensor names are not a UNet's LDM names ({err})") from None
    try:
        fields = json.loads(text)
        policy = QuantPolicy(**fields)
    except (ValueError, TypeError, AttributeError, RecursionError, ConfigError) as err:
        raise _invalid(path, f"metadata {POLICY_KEY!r} at byte {at} is not a tensor policy ({err!r})") from None
    for t in layout.tensors:
        try:
            plan = choose_type(policy_name[t.name], layout.shapes[t.name], policy)
        except (ValueError, TypeError) as err:
            raise _invalid(path, f"metadata {POLICY_KEY!r} at byte {at} cannot be applied ({err!r})") from None
        if (plan.qtype, plan.stored_shape) != (t.qtype, t.stored_shape):
            raise _invalid(
                path, f"tensor {t.name!r} (info at byte {t.at}) is stored as {t.qtype.name} {t.stored_shape}, but "
                f"the file's policy stores it as {plan.qtype.name} {plan.stored_shape}"
            )


def check_gguf(path: str | Path) -> GGUFLayout:
    """The checked layout of the GGUF file (v2/v3) at `path`; UserError if anything is wrong.

    Reads only the header, metadata, tensor infos and padding, never the tensor data.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file {path} " + ("is a folder." if path.is_dir() else "does not exist."))
    size = path.stat().st_size
    if size < 24:
        raise UserError(f"{path} is not a GGUF file: {size} bytes is shorter than a GGUF header (24 bytes).")
    with open(path, "rb") as f:
        cursor = _Cursor(f, size, path)
        magic = cursor.take(4, "magic")
        if struct.unpack("<I", magic)[0] != GGUF_MAGIC:
            raise UserError(f"{path} is not a GGUF file: it starts with {magic!r}, not b'GGUF'.")
        version = cursor.unpack("I", "version")
        if not version & 0xFFFF:  # a version whose low half is zero was written with the other byte order
            cursor.order, version = ">", struct.unpack(">I", struct.pack("<I", version))[0]
        if version not in _SUPPORTED_VERSIONS:
            raise UserError(f"{path}: GGUF version {version} is not supported (only {_SUPPORTED_VERSIONS}).")
        n_tensors = cursor.unpack("Q", "tensor count")
        n_kv = cursor.unpack("Q", "metadata count")
        if n_tensors * 32 + n_kv * 12 > size - cursor.pos:  # a tensor info takes >= 32 bytes, an entry >= 12
            raise _invalid(path, f"{n_tensors} tensors and {n_kv} metadata entries (counts at byte 8) cannot fit")
        metadata = _read_metadata(cursor, n_kv)
        alignment = _alignment(path, metadata)
        _string_entry(path, metadata, "general.architecture", required=True)
        tensors, data_start = _read_tensors(cursor, n_tensors, alignment)
    layout = GGUFLayout(metadata, tensors, _true_shapes(path, metadata, tensors), data_start)
    _check_policy(path, layout)
    return layout

