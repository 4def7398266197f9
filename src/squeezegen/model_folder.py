"""A trained model's folder: `model.safetensors` + `config.json`, written atomically, read with
one clear error for each way a folder can be missing, damaged or from another version.

The RQ-VAE, the prior and the judge all save this way; each passes what it is (`what`), the
format tag its config carries, and the stage that writes it (named in every error).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, TypeVar

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from squeezegen.errors import UserError
from squeezegen.files import atomic_path

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

M = TypeVar("M", bound=nn.Module)


def save_model_folder(model: nn.Module, out_dir: str | Path, config: dict[str, Any]) -> Path:
    """Write `out_dir/` = model.safetensors + config.json (`config`, key-sorted), atomically.

    safetensors' `save_model` handles tied tensors (a shared codebook stored once)."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        save_model(model, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return Path(out_dir)


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
