"""fetch_base: the SD base pipeline folder, from the hub, a local folder, or built locally (`tiny`)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from squeezegen.errors import UserError
from squeezegen.files import atomic_path

log = logging.getLogger(__name__)

# Only what the pipeline needs: fp16 weights of the three models, configs, tokenizer, scheduler.
# No safety checker (~1.2 GB), no fp32 / .ckpt / .bin duplicates.
HUB_ALLOW_PATTERNS = [
    "model_index.json",
    "scheduler/*.json",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors",
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_AUTH_HELP = (
    "If the model is gated or private, accept its licence on huggingface.co and log in (`hf auth login`, "
    "or set HF_TOKEN); without network, set HF_HUB_OFFLINE=1 with a pre-populated Hugging Face cache "
    "(HF_HOME); or point `sd.base` in params.yaml at a local diffusers folder."
)


def fetch_base(spec: str, out_dir: str | os.PathLike, *, seed: int, pipe: StableDiffusionPipeline | None = None) -> Path:
    """Write the base pipeline named by `spec` to `out_dir` (atomically) as a diffusers folder.

    `spec` is `tiny` (a tiny SD-architecture pipeline built from `seed`, offline), an existing
    local diffusers folder (validated by loading it, then re-saved in its own dtype: fp16 stays
    fp16), or a hub repo id
    (fp16 safetensors, configs and tokenizer downloaded; no safety checker). The result loads
    offline with `StableDiffusionPipeline.from_pretrained(out_dir)`. `pipe`, when given, is the
    `tiny` pipeline already built (and pretrained) by the caller.
    Raises UserError when the folder is not a pipeline or the hub cannot provide the model.
    """
    if spec == "tiny":
        from squeezegen.sd.tiny import build_tiny_pipeline  # local import: needs the caption corpus only here

        pipe = pipe if pipe is not None else build_tiny_pipeline(seed)
    elif Path(spec).expanduser().is_dir():
        pipe = _load_local(Path(spec).expanduser())
    elif _REPO_ID.match(spec) and not spec.startswith((".", "/", "~")):
        pipe = _load_from_hub(spec)
    else:
        raise UserError(
            f"sd.base: {spec!r} is neither `tiny`, an existing folder, nor a hub id like "
            "'stable-diffusion-v1-5/stable-diffusion-v1-5'; fix sd.base in params.yaml"
        )
    weight_bytes = sum(t.numel() * t.element_size() for m in pipe.components.values()
                       if isinstance(m, torch.nn.Module) for t in m.state_dict().values())
    check_free_disk(out_dir, int(weight_bytes * 1.05), f"fetch_base ({spec})")  # before writing: fail in seconds
    with atomic_path(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    log.info("fetch_base: %s → %s", spec, out_dir)
    return Path(out_dir)


_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


def weights_dtype(folder: Path, variant: str | None = None) -> torch.dtype | None:
    """The float dtype of the UNet weights in a diffusers folder, read from the safetensors header
    (nothing is loaded); None when there is no such file (diffusers' default, fp32, then applies)."""
    name = "diffusion_pytorch_model" + (f".{variant}" if variant else "") + ".safetensors"
    files = sorted((folder / "unet").glob(name.replace(".safetensors", "*.safetensors")))  # sharded or not
    if not files:
        return None
    with open(files[0], "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    kinds = [v["dtype"] for k, v in header.items() if k != "__metadata__" and v["dtype"] in _SAFETENSORS_DTYPES]
    return _SAFETENSORS_DTYPES[max(set(kinds), key=kinds.count)] if kinds else None


def check_free_disk(out_dir: str | os.PathLike, need_bytes: int, what: str) -> None:
    """UserError when the file system of `out_dir` has less than `need_bytes` free (checked before writing)."""
    probe = Path(out_dir).resolve()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise UserError(
            f"{what} needs ~{need_bytes / 1e9:.1f} GB of disk at {probe}, only {free / 1e9:.1f} GB is free; "
            "free some space (`dvc gc` drops cache entries no commit or experiment uses)"
        )


def _load_local(folder: Path) -> StableDiffusionPipeline:
    if not (folder / "model_index.json").is_file():
        raise UserError(f"sd.base: {folder} has no model_index.json; point it at a diffusers Stable Diffusion folder")
    errors = []
    for variant in (None, "fp16"):  # plain weights, else a folder holding only *.fp16.safetensors
        try:
            # in the folder's own dtype: diffusers would otherwise upcast fp16 weights to fp32 (2× the bytes)
            return StableDiffusionPipeline.from_pretrained(
                str(folder), variant=variant, dtype=weights_dtype(folder, variant) or torch.float32,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False, local_files_only=True,
            )
        except (OSError, ValueError) as exc:
            errors.append(f"{variant or 'default'}: {exc}")
    raise UserError(f"sd.base: {folder} does not load as a StableDiffusionPipeline ({'; '.join(errors)[:500]})")


def _load_from_hub(repo_id: str) -> StableDiffusionPipeline:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = snapshot_download(
            repo_id, allow_patterns=HUB_ALLOW_PATTERNS, local_files_only=constants.HF_HUB_OFFLINE
        )
    except GatedRepoError:
        raise UserError(f"sd.base: {repo_id} is gated and this machine is not allowed to download it. {_AUTH_HELP}") from None
    except RepositoryNotFoundError:
        raise UserError(f"sd.base: no model {repo_id!r} on the Hugging Face hub (or it is private). {_AUTH_HELP}") from None
    except LocalEntryNotFoundError:
        how = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub could not be reached"
        raise UserError(f"sd.base: {repo_id} is not in the local Hugging Face cache and {how}. {_AUTH_HELP}") from None
    except HfHubHTTPError as exc:
        raise UserError(f"sd.base: downloading {repo_id} failed ({exc}). {_AUTH_HELP}") from None
    if not (Path(folder) / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file():
        raise UserError(
            f"sd.base: {repo_id} has no fp16 safetensors weights (unet/diffusion_pytorch_model.fp16.safetensors); "
            "download it yourself and point sd.base at the local diffusers folder"
        )
    return StableDiffusionPipeline.from_pretrained(
        folder, variant="fp16", dtype=torch.float16, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, local_files_only=True,
    )
