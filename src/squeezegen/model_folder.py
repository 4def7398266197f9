"""A trained model's folder: `model.safetensors` + `config.json`, written atomically, read with
one clear error for each way a folder can be missing, damaged or from another version.

The RQ-VAE, the prior and the judge all save this way; each passes what it is (`what`), the
format tag its config carries, and the stage that writes it (named in every error). Folders that
diffusers or transformers load (the base pipeline, the LoRA, the refiner, the 8-bit text
encoder) are checked with `check_model_files` before they are handed to those loaders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, TypeVar

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from squeezegen.errors import UserError
from squeezegen.files import atomic_path

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PIPELINE_INDEX = "model_index.json"  # what makes a folder a diffusers pipeline
LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' load_lora_weights looks for

M = TypeVar("M", bound=nn.Module)


def save_model_folder(model: nn.Module, out_dir: str | Path, config: dict[str, Any]) -> Path:
    """Write `out_dir/` = model.safetensors + config.json (`config`, key-sorted), atomically.

    safetensors' `save_model` handles tied tensors (a shared codebook stored once)."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        save_model(model, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return Path(out_dir)


def check_model_files(folder: str | Path, *, what: str, stage: str, required: tuple[str, ...] = ()) -> Path:
    """`folder` as a Path if it holds every `required` file, every JSON file under it parses and
    every safetensors file under it opens; else one UserError naming the file and `stage`.

    Opening a safetensors file reads and validates its header only (offsets must cover the file
    exactly), so a truncated or overwritten file is caught without reading the weights.
    """
    folder = Path(folder)
    rerun = f"re-run the {stage} stage (`dvc repro {stage}`)"
    if not folder.is_dir():
        raise UserError(f"{folder}: no {what} here; run the {stage} stage first (`dvc repro {stage}`)")
    for name in required:
        if not (folder / name).is_file():
            raise UserError(f"{folder / name}: missing, so {folder} is not a complete {what}; {rerun}")
    for path in sorted(folder.rglob("*.json")):
        try:
            json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not valid JSON ({exc}); {rerun}") from None
    for path in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{path}: damaged or truncated ({str(exc).strip()[:200]}); {rerun}") from None
    return folder


def check_pipeline_folder(folder: str | Path) -> Path:
    """The base pipeline folder (fetch_base's `models/base`): `check_model_files`, and a folder
    for every component its model_index.json names, with weights for the three networks."""
    folder = check_model_files(folder, what="diffusers pipeline", stage="fetch_base", required=(PIPELINE_INDEX,))
    index = json.loads((folder / PIPELINE_INDEX).read_text())
    for name, entry in (index.items() if isinstance(index, dict) else []):
        if isinstance(entry, list) and all(entry) and not (folder / name).is_dir():
            raise UserError(f"{folder / name}: missing ({PIPELINE_INDEX} lists it); re-run the fetch_base stage "
                            "(`dvc repro fetch_base`)")
        if name in ("unet", "vae", "text_encoder") and (folder / name).is_dir() and not any((folder / name).glob("*.safetensors")):
            raise UserError(f"{folder / name}: no weights (*.safetensors); re-run the fetch_base stage (`dvc repro fetch_base`)")
    return folder


def check_lora_folder(folder: str | Path) -> Path:
    """The LoRA folder (finetune_lora's `models/lora`), checked by `check_model_files`."""
    return check_model_files(folder, what="LoRA", stage="finetune_lora", required=(LORA_FILE,))


def read_model_config(model_dir: str | Path, *, what: str, fmt: str, stage: str) -> dict[str, Any]:
    """config.json of a saved model folder; UserError if it is missing, not JSON or not `fmt`."""
    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILE
    if not path.is_file() or not (model_dir / WEIGHTS_FILE).is_file():
        raise UserError(f"{model_dir}: no trained {what} here (needs {CONFIG_FILE} + {WEIGHTS_FILE}); "
                        f"run the {stage} stage first (`dvc repro {stage}`)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); re-run the {stage} stage") from None
    if not isinstance(config, dict) or config.get("format") != fmt:
        raise UserError(f"{path}: not a {what} config of format {fmt!r}; re-run the {stage} stage")
    return config


def load_model_folder(model_dir: str | Path, build: Callable[[dict[str, Any]], M], *, what: str, fmt: str,
                      stage: str, device: Any = "cpu") -> M:
    """The model saved in `model_dir`: `build(config)` rebuilds the architecture, the weights are
    loaded into it, config.json's "meta" becomes `model.meta`; in eval mode on `device`."""
    config = read_model_config(model_dir, what=what, fmt=fmt, stage=stage)
    weights = Path(model_dir) / WEIGHTS_FILE
    try:
        model = build(config)
        load_model(model, str(weights), device="cpu")
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        # A config or weights this version does not build: from another version, or damaged.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{model_dir}: cannot rebuild this {what} from its {CONFIG_FILE} + {WEIGHTS_FILE} "
                        f"({first_line[:300]}); it was probably saved by another version of squeezegen. "
                        f"Re-run the {stage} stage (`dvc repro {stage}`).") from None
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{weights}: damaged or truncated ({str(exc).strip()[:200]}); "
                        f"re-run the {stage} stage (`dvc repro {stage}`)") from None
    model.meta = dict(config.get("meta", {}))
    return model.to(device).eval()
