"""Resumable checkpoints of the shared training loop (`squeezegen.training`).

A checkpoint is `checkpoint_dir/step_<N>/`: accelerate's `save_state` (optimizer, schedule,
GradScaler and every process's RNG states) plus our own `trainable_state.safetensors` (trainable
parameters and buffers only) and `trainer_state.json` (step, loss history, fingerprints). It is
written into `.step_<N>.tmp` and renamed, so a kill mid-save leaves the previous one usable.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"  # step, loss history and fingerprint of one checkpoint
WEIGHTS_FILE = "trainable_state.safetensors"  # trainable parameters + buffers (frozen weights are not saved)
KEEP_CHECKPOINTS = 1  # each checkpoint is renamed into place complete, so the newest is always usable
_STEP_DIR = re.compile(r"^step_(\d+)$")


def cleanup_checkpoints(checkpoint_dir: str | os.PathLike) -> None:
    """Delete a finished run's checkpoint folder (call it on the main process after saving outputs)."""
    shutil.rmtree(checkpoint_dir, ignore_errors=True)


def frozen_names(model: nn.Module, trainable: list[nn.Parameter]) -> set[str]:
    """State-dict names of the parameters that are not trained (left out of checkpoints)."""
    ids = {id(p) for p in trainable}
    return {name for name, p in model.named_parameters(remove_duplicate=False) if id(p) not in ids}


def register_weight_hooks(accelerator: Accelerator, prepared: nn.Module, frozen: set[str]) -> list[Any]:
    """Checkpoint only the trainable parameters and buffers of `prepared` (in our own safetensors file).

    Frozen base weights (a whole SD UNet under a LoRA) would make every checkpoint gigabytes;
    the caller rebuilds them identically, so they are left out of `save_state`/`load_state`.
    Returns the hook handles; `.remove()` them when training ends.
    """

    def index_of(models: list[nn.Module]) -> int | None:
        return next((i for i, m in enumerate(models) if m is prepared), None)

    def save_hook(models: list[nn.Module], weights: list[dict], output_dir: str) -> None:
        i = index_of(models)
        if i is None:
            return
        weights.pop(i)  # accelerate saves weights by position; ours are written below instead
        if accelerator.is_main_process:
            state = accelerator.unwrap_model(prepared).state_dict()
            kept = {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in frozen}
            save_file(kept, os.path.join(output_dir, WEIGHTS_FILE))

    def load_hook(models: list[nn.Module], input_dir: str) -> None:
        i = index_of(models)
        if i is None:
            return
        models.pop(i)
        kept = load_file(os.path.join(input_dir, WEIGHTS_FILE))
        result = accelerator.unwrap_model(prepared).load_state_dict(kept, strict=False)
        missing = set(result.missing_keys) - frozen
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"checkpoint {input_dir} does not match the model: missing {sorted(missing)[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}; delete the folder and rerun"
            )

    return [accelerator.register_save_state_pre_hook(save_hook), accelerator.register_load_state_pre_hook(load_hook)]


def _checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    if not checkpoint_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def find_resume_point(accelerator: Accelerator, checkpoint_dir: Path, run_fingerprint: str, desc: str) -> Path | None:
    """Newest checkpoint made with this fingerprint; clears the folder of anything else (main process)."""
    matching, stale = None, []
    for _, path in _checkpoints(checkpoint_dir):
        try:
            ok = json.loads((path / STATE_FILE).read_text()).get("run_fingerprint") == run_fingerprint
        except (OSError, ValueError):
            ok = False
        if ok:
            matching = path
        else:
            stale.append(path)
    accelerator.wait_for_everyone()  # every process decided before anything is deleted
    if accelerator.is_main_process and checkpoint_dir.is_dir():
        if stale:
            log.warning(
                "%s: discarding %d checkpoint(s) in %s made with other settings or inputs; %s",
                desc, len(stale), checkpoint_dir, "resuming from a matching one" if matching else "starting fresh",
            )
        for path in checkpoint_dir.iterdir():
            if path != matching:  # stale checkpoints and temporaries left by a kill mid-save
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    accelerator.wait_for_everyone()
    return matching


def save_checkpoint(
    accelerator: Accelerator, checkpoint_dir: Path, step: int, history: list[dict], fingerprint: str, run_fingerprint: str
) -> None:
    """`accelerator.save_state` into a temporary folder, then rename it to `step_<step>` (all processes call this)."""
    final = checkpoint_dir / f"step_{step}"
    tmp = checkpoint_dir / f".step_{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "history": history, "fingerprint": fingerprint, "run_fingerprint": run_fingerprint}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for _, old in _checkpoints(checkpoint_dir)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
