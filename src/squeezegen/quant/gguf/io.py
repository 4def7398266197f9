"""Write a UNet state dict to GGUF under the tensor policy, read it back, and summarize it.

File layout decisions:

- tensor names are the original LDM ones by default (`model.diffusion_model.input_blocks.1.0.
  in_layers.2.weight`: what ComfyUI-GGUF, which strips the prefix, and every SD tool read, and
  what diffusers' `from_single_file` converts, which needs the prefix), or the diffusers
  state-dict keys (`key_format="diffusers"`); `squeezegen.key_format` says which. The policy
  always chooses types by the diffusers name (its patterns are written for those);
- `general.architecture` is "sd1", ComfyUI-GGUF's name for SD 1.x UNets;
- a tensor stored as rows of one block keeps its true shape (torch order) as an INT32 array
  under `comfy.gguf.orig_shape.<name>` (ComfyUI-GGUF's convention);
- our own metadata lives under `squeezegen.*` (version, policy as JSON, the caller's keys).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from gguf import GGML_QUANT_VERSION, GGUFReader, GGUFValueType, GGUFWriter
from gguf import quants as gguf_quants
from gguf.constants import GGMLQuantizationType
from tqdm.auto import tqdm

import squeezegen
from squeezegen.errors import UserError
from squeezegen.files import atomic_path
from squeezegen.quant.codecs.registry import CODECS, codec
from squeezegen.quant.gguf.check import ORIG_SHAPE_PREFIX, check_gguf
from squeezegen.quant.gguf.ldm_names import KEY_FORMATS, LDM_UNET_PREFIX, unet_diffusers_to_ldm
from squeezegen.quant.gguf.records import QuantReport, TensorRecord
from squeezegen.quant.mix.importance import expand_importance
from squeezegen.quant.mix.policy import QuantPolicy, TensorPlan, choose_type, tensor_nbytes

ARCHITECTURE = "sd1"
META_PREFIX = "squeezegen."
FLOAT_DTYPES = {GGMLQuantizationType.F16: np.float16, GGMLQuantizationType.F32: np.float32}


# --- numpy codecs -------------------------------------------------------------------------------


def encode_array(x: np.ndarray, qtype: GGMLQuantizationType, *, name: str = "tensor",
                 importance: np.ndarray | None = None) -> np.ndarray:
    """float32 [..., n] → the bytes (uint8 [..., n/block·type_size]) or floats stored for `qtype`.

    `name` labels the tensor in the quantizer's error messages; `importance` (x's shape) weights
    the codec's search. Quantized types go through the codec registry (the gguf package has no
    K-quant quantizer)."""
    if qtype in FLOAT_DTYPES:
        return x.astype(FLOAT_DTYPES[qtype])
    return codec(qtype).quantize(x, name=name, importance=importance)


def decode_array(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Stored bytes or floats → float32 [..., n].

    Registered types use our decoders (equal to gguf's bit for bit; Q4_K ~10× faster on a
    UNet); any other type is decoded by the gguf package.
    """
    if qtype in FLOAT_DTYPES:
        return np.asarray(data, dtype=np.float32)
    if qtype in CODECS:
        return CODECS[qtype].dequantize(np.asarray(data))
    return gguf_quants.dequantize(np.asarray(data), qtype).astype(np.float32, copy=False)


def _byte_shape(plan: TensorPlan) -> tuple[int, ...]:
    """The stored array's shape: floats as they are, quantized rows as bytes."""
    if plan.qtype in FLOAT_DTYPES:
        return plan.stored_shape
    return gguf_quants.quant_shape_to_byte_shape(plan.stored_shape, plan.qtype)


def _rel_rmse(x: np.ndarray, y: np.ndarray) -> float:
    norm = float(np.linalg.norm(x))
    err = float(np.linalg.norm(x - y))
    return err / norm if norm > 0 else err


# --- writer ------------------------------------------------------------------------------------


def _record(plan: TensorPlan, rel_rmse: float) -> TensorRecord:
    return TensorRecord(
        name=plan.name,
        qtype=plan.qtype.name,
        shape=plan.shape,
        stored_shape=plan.stored_shape,
        n_params=plan.n_params,
        bytes=plan.nbytes,
        rel_rmse=rel_rmse,
    )


def _add_metadata_value(writer: GGUFWriter, key: str, value: Any) -> None:
    """One metadata entry; containers are stored as JSON strings."""
    if isinstance(value, bool):
        writer.add_key_value(key, value, GGUFValueType.BOOL)
    elif isinstance(value, int):
        writer.add_key_value(key, value, GGUFValueType.INT64)
    elif isinstance(value, float):
        writer.add_key_value(key, value, GGUFValueType.FLOAT64)
    elif isinstance(value, str):
        writer.add_key_value(key, value, GGUFValueType.STRING)  # add_string would drop ""
    elif value is None:
        writer.add_key_value(key, "null", GGUFValueType.STRING)
    else:
        writer.add_key_value(key, json.dumps(value, sort_keys=True), GGUFValueType.STRING)


def write_planned_gguf(
    path: str | os.PathLike,
    plans: list[TensorPlan],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
    *,
    architecture: str = ARCHITECTURE,
    progress: bool = True,
    desc: str = "write GGUF",
    importance: Mapping[str, np.ndarray] | None = None,
    encoded: Mapping[tuple[str, str], np.ndarray] | None = None,
) -> tuple[list[TensorRecord], int]:
    """Write `tensors[plan.name]` as each plan says (type, stored shape, orig_shape) into a GGUF
    file at `path`, with `metadata` (full keys) next to `general.architecture`.

    importance: {name: E[x²] per input channel} weighting the codecs (expanded to the stored
    layout here). encoded: {(name, type name): bytes} already quantized the same way (the
    allocation's candidates), written as they are instead of quantizing again.

    Tensors are encoded and written one at a time (peak memory ≈ one tensor in fp32 plus its
    encoding); the file is written atomically. Returns (a record per tensor, the file's bytes).
    """
    records: list[TensorRecord] = []
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = GGUFWriter(tmp, arch=architecture)
        writer.add_quantization_version(GGML_QUANT_VERSION)
        for key, value in metadata.items():
            _add_metadata_value(writer, key, value)
        for plan in plans:
            if plan.orig_shape is not None:
                writer.add_key_value(
                    ORIG_SHAPE_PREFIX + plan.name, list(plan.orig_shape), GGUFValueType.ARRAY, GGUFValueType.INT32
                )
            raw_dtype = None if plan.qtype in FLOAT_DTYPES else plan.qtype
            np_dtype = FLOAT_DTYPES.get(plan.qtype, np.uint8)
            writer.add_tensor_info(plan.name, _byte_shape(plan), np.dtype(np_dtype), plan.nbytes, raw_dtype=raw_dtype)

        # Header, metadata and tensor infos first, then the tensors as they are encoded: the
        # writer never holds more than one tensor.
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            total = sum(plan.n_params for plan in plans)
            with tqdm(total=total, desc=desc, unit="w", unit_scale=True, disable=not progress) as bar:
                for plan in plans:
                    x = tensors[plan.name].detach().to("cpu", torch.float32).numpy().reshape(plan.stored_shape)
                    data = (encoded or {}).get((plan.name, plan.qtype.name))
                    if data is None:
                        weights = _stored_importance(plan, importance)
                        data = encode_array(x, plan.qtype, name=plan.name, importance=weights)  # [*rows, bytes/row]
                    writer.write_tensor_data(data)
                    records.append(_record(plan, _rel_rmse(x, decode_array(data, plan.qtype))))
                    bar.update(plan.n_params)
                    del x, data
        finally:
            writer.close()
        bytes_gguf = tmp.stat().st_size
    return records, bytes_gguf


def _stored_importance(plan: TensorPlan, importance: Mapping[str, np.ndarray] | None) -> np.ndarray | None:
    if not importance or plan.qtype in FLOAT_DTYPES or plan.name not in importance:
        return None
    return expand_importance(importance[plan.name], plan.shape, plan.stored_shape)


def write_unet_gguf(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    *,
    policy: QuantPolicy = QuantPolicy(),
    metadata: Mapping[str, Any] | None = None,
    architecture: str = ARCHITECTURE,
    key_format: str = "diffusers",
    progress: bool = True,
    encoded: Mapping[tuple[str, str], np.ndarray] | None = None,
) -> QuantReport:
    """Quantize `state_dict` (diffusers UNet keys) tensor by tensor into a GGUF file at `path`.

    The policy's `importance` vectors (diffusers names) weight the codecs; `encoded` holds bytes
    already quantized the same way, keyed by (diffusers name, type name).

    Each tensor's type comes from `choose_type(diffusers name, shape, policy)`; with `key_format`
    "ldm" it is stored under `model.diffusion_model.<LDM name>` (the report uses the stored
    names). `metadata` entries are stored as `squeezegen.<key>` (str/int/float/bool as such,
    anything else as JSON), next to `squeezegen.version`, `squeezegen.policy` and
    `squeezegen.key_format`. Written by `write_planned_gguf` (one tensor at a time, atomically).
    Returns a QuantReport with per-tensor sizes and errors.
    """
    metadata = dict(metadata or {})
    if reserved := {"version", "key_format", "policy"} & set(metadata):
        raise ValueError(f"metadata keys {sorted(reserved)} are written by write_unet_gguf itself")
    if key_format not in KEY_FORMATS:
        raise ValueError(f"key_format must be one of {KEY_FORMATS}, got {key_format!r}")
    stored_name = {name: name for name in state_dict}
    if key_format == "ldm":
        stored_name = {name: LDM_UNET_PREFIX + ldm for name, ldm in unet_diffusers_to_ldm(state_dict).items()}
    plans = [
        dataclasses.replace(choose_type(name, tuple(tensor.shape), policy), name=stored_name[name])
        for name, tensor in state_dict.items()
    ]
    entries = {"version": squeezegen.__version__, "key_format": key_format, "policy": policy.to_json(), **metadata}
    entries = {META_PREFIX + key: value for key, value in entries.items()}
    importance = {stored_name[n]: v for n, v in policy.importance.items() if n in stored_name}
    encoded = {(stored_name[n], q): data for (n, q), data in (encoded or {}).items() if n in stored_name}
    records, bytes_gguf = write_planned_gguf(
        path, plans, {stored_name[name]: t for name, t in state_dict.items()}, entries,
        architecture=architecture, progress=progress, desc="quantize UNet", importance=importance, encoded=encoded,
    )  # fmt: skip
    return QuantReport(tensors=records, bytes_gguf=bytes_gguf, metadata=metadata)


# --- reader ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file.

    shape: the true shape (torch order; restored from `comfy.gguf.orig_shape.*` when reshaped).
    stored_shape: the shape as stored (torch order). data: a read-only view of the file —
    uint8 [*stored_shape[:-1], bytes per row] for quantized types, float16/float32 otherwise.
    """

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    stored_shape: tuple[int, ...]
    data: np.ndarray

    @property
    def n_params(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.qtype, self.n_params)

    @property
    def quantized(self) -> bool:
        return self.qtype not in FLOAT_DTYPES

    def dequantize(self) -> np.ndarray:
        """float32 [*shape]."""
        return decode_array(self.data, self.qtype).reshape(self.shape)


def _field_value(field: Any) -> Any:
    value = field.contents()
    return value.item() if isinstance(value, np.generic) else value


def read_gguf(path: str | os.PathLike) -> tuple[dict[str, GGUFTensor], dict[str, Any]]:
    """Open a GGUF file: (tensors by name, in file order; metadata by key).

    Metadata excludes the reader's `GGUF.*` pseudo-fields and the `comfy.gguf.orig_shape.*`
    entries (those become the tensors' `shape`). The file is checked first, as strictly as
    ggml does (`check_gguf`); raises UserError if it is not a valid, complete GGUF file.
    """
    path = Path(path)
    layout = check_gguf(path)  # GGUFReader trusts every length and offset; the check does not
    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a valid GGUF file ({err!r}). Re-create it with the quantize stage.") from err
    if [(t.name, t.data_offset, t.n_bytes) for t in reader.tensors] != [
        (t.name, t.offset, t.nbytes) for t in layout.tensors
    ]:  # both walked the same bytes: a difference is a bug in one of them, not in the file
        raise RuntimeError(f"{path}: gguf's reader and check_gguf disagree on the tensor layout")

    metadata = {
        key: _field_value(field)
        for key, field in reader.fields.items()
        if not key.startswith(("GGUF.", ORIG_SHAPE_PREFIX))
    }
    tensors: dict[str, GGUFTensor] = {}
    for t, info in zip(reader.tensors, layout.tensors):
        shape = layout.shapes[info.name]
        tensors[info.name] = GGUFTensor(info.name, info.qtype, shape, info.stored_shape, t.data)
    return tensors, metadata


# --- summary (`squeezegen inspect file.gguf`) ----------------------------------------------------


def summarize_gguf(path: str | os.PathLike) -> dict[str, Any]:
    """Per-tensor rows, counts by type, effective bits per weight and metadata of a GGUF file."""
    path = Path(path)
    tensors, metadata = read_gguf(path)
    rows = [
        {
            "name": t.name,
            "type": t.qtype.name,
            "shape": list(t.shape),
            "stored_shape": list(t.stored_shape),
            "n_params": t.n_params,
            "bytes": t.nbytes,
        }
        for t in tensors.values()
    ]
    by_type: dict[str, dict[str, int]] = {}
    for row in rows:
        entry = by_type.setdefault(row["type"], {"tensors": 0, "params": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["params"] += row["n_params"]
        entry["bytes"] += row["bytes"]
    n_params = sum(r["n_params"] for r in rows)
    tensor_bytes = sum(r["bytes"] for r in rows)
    return {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "n_tensors": len(rows),
        "n_params": n_params,
        "tensor_bytes": tensor_bytes,
        "bits_per_weight": 8 * tensor_bytes / max(n_params, 1),
        "by_type": dict(sorted(by_type.items())),
        "metadata": metadata,
        "tensors": rows,
    }


def format_summary(summary: Mapping[str, Any], *, max_tensors: int | None = None) -> str:
    """The summary as plain text: totals, counts by type, metadata, then one line per tensor."""
    lines = [
        f"{summary['path']}: {summary['n_tensors']} tensors, {summary['n_params']:,} params, "
        f"{summary['file_bytes'] / 1e6:.2f} MB, {summary['bits_per_weight']:.3f} bits/weight",
    ]
    for qtype, entry in summary["by_type"].items():
        share = entry["params"] / max(summary["n_params"], 1)
        bpw = 8 * entry["bytes"] / max(entry["params"], 1)
        lines.append(f"  {qtype:<5} {entry['tensors']:>5} tensors {entry['params']:>14,} params ({share:6.1%}) "
                     f"{bpw:.3f} bits/weight")
    for key, value in summary["metadata"].items():
        lines.append(f"  {key} = {value}")
    rows = summary["tensors"] if max_tensors is None else summary["tensors"][:max_tensors]
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        stored = "" if r["stored_shape"] == r["shape"] else f" stored {tuple(r['stored_shape'])}"
        lines.append(f"{r['name']:<{width}}  {r['type']:<5} {tuple(r['shape'])}{stored}  {r['bytes']:,} B")
    if len(rows) < len(summary["tensors"]):
        lines.append(f"... {len(summary['tensors']) - len(rows)} more tensors")
    return "\n".join(lines)

