"""What quantizing a UNet produced: per-tensor records and the totals `metrics/quantize.json` needs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TensorRecord:
    """One tensor as written: type, true and stored shape, size and reconstruction error.

    rel_rmse is ‖x − dequant(x)‖ / ‖x‖ against the tensor handed to the writer.
    """

    name: str
    qtype: str
    shape: tuple[int, ...]
    stored_shape: tuple[int, ...]
    n_params: int
    bytes: int
    rel_rmse: float

    @property
    def quantized(self) -> bool:
        return self.qtype not in ("F16", "F32")


@dataclass(frozen=True)
class QuantReport:
    """Per-tensor records plus the size of the written file."""

    tensors: list[TensorRecord]
    bytes_gguf: int
    metadata: dict = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return sum(t.n_params for t in self.tensors)

    @property
    def bytes_fp16(self) -> int:
        """What the same tensors take in fp16."""
        return 2 * self.n_params

    @property
    def bytes_tensors(self) -> int:
        """Bytes of tensor data (the file minus header, metadata and alignment padding)."""
        return sum(t.bytes for t in self.tensors)

    @property
    def bpw(self) -> float:
        """Bits per weight over all parameters (tensor data only)."""
        return 8 * self.bytes_tensors / max(self.n_params, 1)

    @property
    def q4k_fraction(self) -> float:
        """Share of parameters stored as Q4_K."""
        return sum(t.n_params for t in self.tensors if t.qtype == "Q4_K") / max(self.n_params, 1)

    @property
    def rel_rmse_mean(self) -> float:
        """Mean relative RMSE over the quantized (non-float) tensors; 0 when there are none."""
        errors = [t.rel_rmse for t in self.tensors if t.quantized]
        return sum(errors) / len(errors) if errors else 0.0

    @property
    def rel_rmse_max(self) -> float:
        return max((t.rel_rmse for t in self.tensors if t.quantized), default=0.0)

    def counts_by_type(self) -> dict[str, dict[str, int]]:
        """{type: {"tensors", "params", "bytes"}}."""
        out: dict[str, dict[str, int]] = {}
        for t in self.tensors:
            row = out.setdefault(t.qtype, {"tensors": 0, "params": 0, "bytes": 0})
            row["tensors"] += 1
            row["params"] += t.n_params
            row["bytes"] += t.bytes
        return dict(sorted(out.items()))

    def metrics(self) -> dict:
        """The flat totals for `metrics/quantize.json`."""
        return {
            "n_tensors": len(self.tensors),
            "n_params": self.n_params,
            "bytes_fp16": self.bytes_fp16,
            "bytes_gguf": self.bytes_gguf,
            "compression_ratio": self.bytes_fp16 / max(self.bytes_gguf, 1),
            "bpw": self.bpw,
            "q4k_fraction": self.q4k_fraction,
            "rel_rmse_mean": self.rel_rmse_mean,
            "rel_rmse_max": self.rel_rmse_max,
            "by_type": self.counts_by_type(),
        }

    def manifest(self) -> dict:
        """Every tensor's type, shape and bytes, plus the totals (for `manifest.json`)."""
        return {
            "totals": self.metrics(),
            "metadata": self.metadata,
            "tensors": {
                t.name: {
                    "type": t.qtype,
                    "shape": list(t.shape),
                    "stored_shape": list(t.stored_shape),
                    "n_params": t.n_params,
                    "bytes": t.bytes,
                    "rel_rmse": t.rel_rmse,
                }
                for t in self.tensors
            },
        }
