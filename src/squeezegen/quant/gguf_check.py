"""Bounds-check a GGUF file's layout before `gguf.GGUFReader` parses it.

GGUFReader trusts every length field: reads past the end of its memory map return empty
arrays rather than errors, so a corrupt array length makes it loop up to 2^64 times, and a
truncated file fails with a bare IndexError or reshape error. This walk over the header,
metadata and tensor infos checks each length against the bytes that remain (so it cannot run
away) and turns every problem into one UserError naming the file and what is wrong.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType

from squeezegen.errors import UserError

_SCALAR_SIZES = {vtype: np.dtype(np_type).itemsize for vtype, np_type in GGUFReader.gguf_scalar_to_np.items()}
_MAX_DIMS = 4  # GGML_MAX_DIMS in ggml.h
_SUPPORTED_VERSIONS = (2, 3)


class _Cursor:
    """Reads little- or big-endian fields from a buffer, refusing to run past its end."""

    def __init__(self, buf: mmap.mmap, path: Path, order: str) -> None:
        self.buf, self.path, self.order, self.pos = buf, path, order, 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise UserError(
                f"{self.path} is not a complete GGUF file: {what} at byte {self.pos} needs {n} bytes but the "
                f"file ends at byte {len(self.buf)} (truncated or corrupt). Re-create the file."
            )
        view = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack(self.order + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("Q", f"{what} length")
        raw = self.take(length, what)
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"{self.path} is not a valid GGUF file: {what} is not UTF-8 ({err}).") from err


def _value_type(cursor: _Cursor, raw: int, what: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise UserError(f"{cursor.path} is not a valid GGUF file: {what} has unknown value type {raw}.") from None


def _skip_value(cursor: _Cursor, vtype: GGUFValueType, what: str) -> int | None:
    """Step over one metadata value; returns it when it is an integer scalar."""
    if vtype == GGUFValueType.STRING:
        cursor.string(what)
        return None
    if vtype == GGUFValueType.ARRAY:
        item_type = _value_type(cursor, cursor.unpack("I", f"{what} item type"), what)
        count = cursor.unpack("Q", f"{what} length")
        if item_type in _SCALAR_SIZES:  # checked in one go: `count` may be absurd
            cursor.take(count * _SCALAR_SIZES[item_type], what)
        else:  # strings / nested arrays: each item consumes bytes, so the loop ends at EOF at worst
            for _ in range(count):
                _skip_value(cursor, item_type, what)
        return None
    raw = cursor.take(_SCALAR_SIZES[vtype], what)
    if vtype in (GGUFValueType.UINT32, GGUFValueType.UINT64):
        return int.from_bytes(raw, "little" if cursor.order == "<" else "big")
    return None


def check_gguf_layout(path: str | Path) -> None:
    """Raise UserError unless `path` is a structurally complete GGUF file (v2/v3).

    Checks the magic, version, every metadata and tensor-info length, the tensor types and that
    every tensor's data lies inside the file. Does not decode tensor data.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file {path} does not exist.")
    size = path.stat().st_size
    if size < 24:
        raise UserError(f"{path} is not a GGUF file: {size} bytes is shorter than a GGUF header (24 bytes).")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if struct.unpack("<I", buf[:4])[0] != GGUF_MAGIC:
            raise UserError(f"{path} is not a GGUF file: it starts with {bytes(buf[:4])!r}, not b'GGUF'.")
        # A version whose low half is zero was written with the other byte order.
        order = "<" if struct.unpack("<I", buf[4:8])[0] & 0xFFFF else ">"
        cursor = _Cursor(buf, path, order)
        cursor.pos = 4
        version = cursor.unpack("I", "version")
        if version not in _SUPPORTED_VERSIONS:
            raise UserError(f"{path}: GGUF version {version} is not supported (only {_SUPPORTED_VERSIONS}).")
        n_tensors = cursor.unpack("Q", "tensor count")
        n_kv = cursor.unpack("Q", "metadata count")

        alignment = GGUF_DEFAULT_ALIGNMENT
        for i in range(n_kv):  # every entry consumes >= 12 bytes, so this ends at EOF at worst
            key = cursor.string(f"metadata key #{i}")
            vtype = _value_type(cursor, cursor.unpack("I", f"type of {key}"), key)
            value = _skip_value(cursor, vtype, f"metadata {key}")
            if key == "general.alignment" and value is not None:
                alignment = value
        if alignment <= 0 or alignment & (alignment - 1):
            raise UserError(f"{path} is not a valid GGUF file: alignment {alignment} is not a power of two.")

        extents: list[tuple[str, int, int]] = []
        for i in range(n_tensors):
            name = cursor.string(f"tensor name #{i}")
            n_dims = cursor.unpack("I", f"rank of {name}")
            if not 1 <= n_dims <= _MAX_DIMS:
                raise UserError(f"{path} is not a valid GGUF file: tensor {name} has rank {n_dims}.")
            dims = [cursor.unpack("Q", f"shape of {name}") for _ in range(n_dims)]
            raw_type = cursor.unpack("I", f"type of {name}")
            offset = cursor.unpack("Q", f"offset of {name}")
            try:
                qtype = GGMLQuantizationType(raw_type)
                block, type_size = GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise UserError(f"{path} is not a valid GGUF file: tensor {name} has unknown type {raw_type}.") from None
            n_elements = int(np.prod(dims, dtype=object))
            if dims[0] % block:
                raise UserError(f"{path} is not a valid GGUF file: tensor {name} rows are not whole {qtype.name} blocks.")
            extents.append((name, offset, n_elements // block * type_size))

        data_start = -(-cursor.pos // alignment) * alignment
        for name, offset, nbytes in extents:
            end = data_start + offset + nbytes
            if end > size:
                raise UserError(
                    f"{path} is not a complete GGUF file: tensor {name} needs bytes up to {end} but the file "
                    f"has {size} (truncated). Re-create the file."
                )
