"""The CLIP text encoder with 8-bit Linear weights (bitsandbytes LLM.int8), saved and reloaded.

transformers quantizes at load time (`BitsAndBytesConfig(load_in_8bit=True)`) and serializes
the int8 weights plus their per-row scales; the saved config.json carries the quantization
config, so a plain `from_pretrained` of the output folder loads it in 8 bits again. Works on
CPU with bitsandbytes ≥ 0.49 (its CPU backend) and on CUDA.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from transformers import BitsAndBytesConfig, CLIPTextModel

from squeezegen.device import default_device
from squeezegen.errors import UserError
from squeezegen.files import atomic_path
from squeezegen.logfilters import drop

_CAST_WARNING = "MatMul8bitLt: inputs will be cast"
def _silence_cast_warning() -> None:
    """bitsandbytes logs this on every 8-bit matmul whose input is not fp16: expected, not news."""
    drop("bitsandbytes.autograd._functions", _CAST_WARNING)


def _text_encoder_folder(folder: str | os.PathLike) -> Path:
    """A CLIPTextModel folder: `folder` itself or its `text_encoder/` (a pipeline folder)."""
    folder = Path(folder)
    for candidate in (folder, folder / "text_encoder"):
        if (candidate / "config.json").is_file():
            return candidate
    raise UserError(f"No text encoder found: neither {folder}/config.json nor {folder}/text_encoder/config.json exists.")


def quantize_text_encoder_int8(
    source: str | os.PathLike | CLIPTextModel,
    out_dir: str | os.PathLike,
    *,
    device: str | None = None,
    dtype: torch.dtype = torch.float16,
) -> CLIPTextModel:
    """Load a CLIPTextModel with 8-bit Linear weights and save it to `out_dir` (atomically).

    source: a CLIPTextModel folder, a pipeline folder with `text_encoder/`, or a model in memory
    (saved to a temporary folder first: transformers quantizes while loading). `dtype` is the
    type of everything that stays unquantized (embeddings, norms, biases). Returns the 8-bit
    model, loaded on `device` (default: cuda if available, else cpu).
    """
    _silence_cast_warning()
    device = device or str(default_device())
    with tempfile.TemporaryDirectory(prefix="text_encoder_") as scratch:
        if isinstance(source, CLIPTextModel):
            source.save_pretrained(scratch)
            folder = Path(scratch)
        else:
            folder = _text_encoder_folder(source)
        model = CLIPTextModel.from_pretrained(
            folder,
            quantization_config=BitsAndBytesConfig(load_in_8bit=True),
            device_map={"": device},
            dtype=dtype,
        )
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
    return model.eval()


def load_text_encoder_int8(
    folder: str | os.PathLike, *, device: str | None = None, dtype: torch.dtype = torch.float16
) -> CLIPTextModel:
    """Reload a text encoder saved by `quantize_text_encoder_int8` (8-bit weights, on `device`)."""
    _silence_cast_warning()
    folder = _text_encoder_folder(folder)
    model = CLIPTextModel.from_pretrained(folder, device_map={"": device or str(default_device())}, dtype=dtype)
    if getattr(model.config, "quantization_config", None) is None:
        raise UserError(f"{folder} holds an unquantized text encoder; run the quantize stage to make the 8-bit one.")
    return model.eval()


def text_encoder_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Resident bytes of `model` as loaded, and what the same weights take in fp16.

    Counts parameters and buffers, plus bitsandbytes' per-row int8 scales (`weight.SCB`), which
    hang off the weights as attributes rather than being registered.
    """
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    resident = sum(t.numel() * t.element_size() for t in tensors.values())
    n_params = sum(t.numel() for t in model.parameters())
    scales = [getattr(p, "SCB", None) for p in model.parameters()]
    resident += sum(s.numel() * s.element_size() for s in scales if isinstance(s, torch.Tensor))
    return {"resident_bytes": resident, "fp16_bytes": 2 * n_params}
