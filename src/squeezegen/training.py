"""The one training loop (accelerate) behind the LoRA, RQ-VAE and refiner trainings.

A caller builds a model, a dataset and a loss function, then calls `train(...)`:

    result = train(model=net, loss_fn=my_loss, dataset=ds, settings=LoopSettings(...),
                   checkpoint_dir=Path("checkpoints/train_rqvae"), fingerprint=hash_of_config_and_inputs)
    save(result.model)                  # on the main process only
    cleanup_checkpoints(checkpoint_dir)  # training finished: the checkpoints are no longer needed

What it does for every caller alike:

- Runs through `accelerate` (`Accelerator.prepare`), so the same code trains on a CPU, one GPU or
  several (`accelerate launch --multi_gpu ...`, `accelerate launch --num_processes 2 --cpu`).
  Only the main process writes files, logs and shows the tqdm bar.
- AdamW (bitsandbytes AdamW8bit when `use_8bit_adam` and CUDA), a diffusers learning-rate
  schedule with warm-up, gradient accumulation, gradient clipping, mixed precision (GPU only).
- Resumable, exactly: every `checkpoint_every` optimizer steps the state (trainable weights and
  buffers, optimizer, schedule, RNG states, loss history) is saved into
  `checkpoint_dir/step_<N>`; a rerun with the same fingerprint continues from the newest one and
  ends with bit-identical weights and history. The data order is a pure function of
  (seed, epoch), and the batches already used in the interrupted epoch are skipped.
- A NaN/Inf loss stops training with a `UserError` naming the step, before that step is applied
  or saved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, set_seed
from diffusers.optimization import get_scheduler
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from squeezegen.checkpointing import (
    STATE_FILE,
    cleanup_checkpoints,
    find_resume_point,
    frozen_names,
    register_weight_hooks,
    save_checkpoint,
)
from squeezegen.errors import UserError
from squeezegen.memory.probes import measure_peak

__all__ = ["LoopSettings", "TrainResult", "EpochPermutationSampler", "make_accelerator", "train", "cleanup_checkpoints"]

log = logging.getLogger(__name__)

LossOutput = torch.Tensor | tuple[torch.Tensor, dict[str, Any]]


@dataclass(frozen=True)
class LoopSettings:
    """Optimisation knobs of one training run (all stages fill it from their params section)."""

    max_steps: int  # optimizer steps in the whole run
    lr: float  # peak AdamW learning rate
    checkpoint_every: int  # optimizer steps between resumable checkpoints
    seed: int  # seeds the data order, the noise and every other random draw in training
    batch_size: int  # samples per micro-batch per process
    lr_scheduler: str = "constant"  # diffusers.optimization.get_scheduler name: constant | linear | cosine ...
    warmup_steps: int = 0  # linear warm-up optimizer steps
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # clip the global L2 gradient norm to this
    grad_accum: int = 1  # micro-batches per optimizer step
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # autocast on CUDA; forced "no" on CPU
    use_8bit_adam: bool = False  # bitsandbytes AdamW8bit (CUDA only; plain AdamW elsewhere)
    num_workers: int = 0  # DataLoader worker processes
    log_every: int = 1  # call `on_log` every this many optimizer steps

    def __post_init__(self) -> None:
        for name in ("max_steps", "checkpoint_every", "batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoopSettings.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.num_workers < 0:
            raise ValueError("LoopSettings.warmup_steps and num_workers must be >= 0")


def cosine_settings(section: Any, *, seed: int) -> LoopSettings:
    """AdamW with a linear warm-up then cosine decay, from a params section's max_steps, lr,
    checkpoint_every, batch_size, warmup_steps, max_grad_norm and (where it has one) weight_decay:
    the schedule of train_rqvae, train_refiner, train_judge and train_prior."""
    return LoopSettings(
        max_steps=section.max_steps, lr=section.lr, checkpoint_every=section.checkpoint_every, seed=seed,
        batch_size=section.batch_size, lr_scheduler="cosine", warmup_steps=section.warmup_steps,
        weight_decay=getattr(section, "weight_decay", 0.0), max_grad_norm=section.max_grad_norm,
    )


@dataclass
class TrainResult:
    """What `train` returns. `history` is the same on every process (losses are averaged across them);
    the timing and memory figures are this process's own."""

    model: nn.Module  # the trained model, unwrapped from DDP/autocast wrappers
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per optimizer step
    steps_per_s: float = 0.0  # optimizer steps per second run in this process (checkpoint saving excluded)
    peak_mem_bytes: int = 0  # over the training loop: CUDA max_memory_allocated; CPU: peak RSS of this process
    resumed_from_step: int = 0  # step of the checkpoint this run continued from (0 = fresh start)
    seconds: float = 0.0  # wall time of the whole `train` call


class EpochPermutationSampler(Sampler[int]):
    """Shuffles indices with a permutation that depends only on (seed, epoch).

    Written here because torch's RandomSampler draws from a generator whose state depends on how
    many epochs were started in this process; a resumed run must reproduce the order of an epoch
    without replaying the earlier ones. No `generator` attribute on purpose: accelerate then
    leaves the sampler alone and all processes see the same order (each takes its own shard).
    """

    def __init__(self, num_samples: int, *, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(self.num_samples, generator=rng).tolist()

    def __len__(self) -> int:
        return self.num_samples


def make_accelerator(settings: LoopSettings, **kwargs: Any) -> Accelerator:
    """The Accelerator `train` expects: mixed precision (CPU: "no") and accumulation by counting.

    Build it yourself (and pass it to `train`) when you need `accelerator.device` or
    `accelerator.is_main_process` before training, e.g. to place frozen models. accelerate keeps
    one state per process, so all Accelerators of a process share one mixed-precision mode. Gradient
    accumulation counts micro-batches across epoch ends (`sync_with_dataloader=False`), so every
    optimizer step sees exactly `grad_accum` micro-batches and resume points are well defined.
    """
    mixed_precision = settings.mixed_precision if torch.cuda.is_available() else "no"
    plugin = GradientAccumulationPlugin(num_steps=settings.grad_accum, sync_with_dataloader=False)
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_plugin=plugin, **kwargs)


def train(
    *,
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any, int], LossOutput],
    dataset: Dataset,
    settings: LoopSettings,
    checkpoint_dir: Path,
    fingerprint: str,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    accelerator: Accelerator | None = None,
    on_log: Callable[[int, dict[str, Any]], None] | None = None,
    stop_after: int | None = None,
    desc: str = "train",
    params: Sequence[nn.Parameter] | None = None,
) -> TrainResult:
    """Train `model` for `settings.max_steps` optimizer steps; resume from a matching checkpoint.

    Args:
        model: the module to train. Its parameters with `requires_grad` are optimised (or exactly
            `params` if given); frozen parameters are neither optimised nor checkpointed, so the
            caller must rebuild them identically on a rerun (the fingerprint should cover them).
            Buffers (e.g. EMA codebooks) are checkpointed. Seed before building it: `train` seeds
            with `settings.seed` only once training starts.
        loss_fn: `loss_fn(model, batch, step)` → loss tensor, or `(loss, extras)` where extras is a
            dict of numbers/0-d tensors averaged like the loss and added to the history.
            `model` is the prepared (maybe DDP-wrapped) model: call it, don't read attributes
            from it. `batch` is a collated micro-batch already on `accelerator.device`.
            `step` is the number of optimizer steps done so far (0 for the first step). The
            call runs under `accelerator.autocast()`. It may draw random numbers from torch's
            global RNG (noise, timesteps): those are seeded and checkpointed.
        dataset: a map-style dataset. Its `__getitem__` must not draw random numbers (a batch is
            loaded one ahead of its use, so such draws would differ after a resume); put random
            augmentation in `loss_fn`.
        settings: the optimisation knobs (see `LoopSettings`).
        checkpoint_dir: where `step_<N>/` checkpoints live. Not an output: delete it with
            `cleanup_checkpoints` once the trained model is saved.
        fingerprint: a hash of everything the result depends on (config, inputs, base weights).
            A checkpoint is resumed only if it was made with the same fingerprint (and the same
            loop settings and process count); otherwise the folder is cleared and training
            starts fresh.
        collate_fn: DataLoader collate function (default: torch's).
        accelerator: an Accelerator from `make_accelerator(settings)`; a new one if None.
        on_log: called on the main process as `on_log(step, entry)` every `log_every` steps, with
            the step's history entry (e.g. to log to MLflow).
        stop_after: stop right after step `stop_after`, saving a checkpoint there first (to
            simulate an interruption); None runs to `max_steps`.
        desc: label of the progress bar and log lines.
        params: the parameters to optimise, if not all `requires_grad` ones.

    Returns:
        `TrainResult`; `history[i]` has `step` (1-based), `loss` (mean over the step's
        micro-batches and processes), `lr` (the rate used for that step), `grad_norm` (before
        clipping; None when not finite under fp16 loss scaling) and the extras.

    Raises:
        UserError: the loss became NaN/Inf (names the step), or the dataset is empty.
    """
    started = time.perf_counter()
    accelerator = accelerator or make_accelerator(settings)
    if accelerator.gradient_accumulation_steps != settings.grad_accum:
        raise ValueError(
            f"accelerator accumulates {accelerator.gradient_accumulation_steps} micro-batches but settings.grad_accum="
            f"{settings.grad_accum}; build it with make_accelerator(settings)"
        )
    if settings.grad_accum > 1 and accelerator.gradient_state.plugin_kwargs.get("sync_with_dataloader", True):
        raise ValueError("gradient accumulation must not sync at epoch ends; build the accelerator with make_accelerator(settings)")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise UserError(f"{desc}: the training dataset is empty; check the processed data")
    checkpoint_dir = Path(checkpoint_dir)

    trainable = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("nothing to train: no parameter requires grad")
    frozen = frozen_names(model, trainable)
    run_fingerprint = _run_fingerprint(fingerprint, settings, accelerator.num_processes)

    set_seed(settings.seed, device_specific=True)  # each process its own noise; load_state overrides on resume
    sampler = EpochPermutationSampler(len(dataset), seed=settings.seed)  # type: ignore[arg-type]
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=settings.num_workers,
        drop_last=len(dataset) >= settings.batch_size * accelerator.num_processes,  # type: ignore[arg-type]
        # Its own generator, so starting an epoch's iterator never touches the global RNG.
        generator=torch.Generator().manual_seed(settings.seed),
    )
    optimizer = _make_optimizer(trainable, settings)
    # accelerate steps the schedule once per process on every optimizer step (diffusers' scripts scale the same way).
    scheduler = get_scheduler(
        settings.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=settings.warmup_steps * accelerator.num_processes,
        num_training_steps=settings.max_steps * accelerator.num_processes,
    )
    # The training window's peak (a stage's later phases are measured apart: memory.stage_peak_bytes).
    peak_window = measure_peak(accelerator.device)
    peak = peak_window.__enter__()
    prepared, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    hooks = register_weight_hooks(accelerator, prepared, frozen)
    try:
        step, history = 0, []
        resume_dir = find_resume_point(accelerator, checkpoint_dir, run_fingerprint, desc)
        if resume_dir is not None:
            accelerator.load_state(str(resume_dir))
            state = json.loads((resume_dir / STATE_FILE).read_text())
            step, history = int(state["step"]), list(state["history"])
            if accelerator.is_main_process:  # a warning: a resumed run's timings cover only the steps it runs
                log.warning("%s: resuming from %s at step %d of %d (timings cover steps %d-%d only)",
                            desc, resume_dir, step, settings.max_steps, step + 1, settings.max_steps)
        resumed_from = step
        end = settings.max_steps if stop_after is None else min(stop_after, settings.max_steps)

        micro_per_epoch = len(loader)  # micro-batches per epoch on this process
        epoch, skip = divmod(step * settings.grad_accum, micro_per_epoch)
        progress = tqdm(total=settings.max_steps, initial=step, desc=desc, disable=not accelerator.is_local_main_process)
        loop_started, save_seconds, sums, micro = time.perf_counter(), 0.0, {}, 0
        while step < end:
            epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
            epoch_loader.set_epoch(epoch)
            sampler.set_epoch(epoch)  # also directly: a skipping loader may not forward set_epoch
            for batch in epoch_loader:
                with accelerator.accumulate(prepared):
                    with accelerator.autocast():
                        out = loss_fn(prepared, batch, step)
                    loss, extras = out if isinstance(out, tuple) else (out, {})
                    values = _mean_across_processes(accelerator, loss, extras)
                    if not math.isfinite(values["loss"]):
                        raise UserError(
                            f"{desc}: the loss became {values['loss']} at step {step + 1}; nothing was saved for that "
                            "step. Lower the learning rate, or train in fp32 (`lora.mixed_precision: fp32`)."
                        )
                    accelerator.backward(loss)
                    grad_norm = None
                    if accelerator.sync_gradients:
                        lr = optimizer.param_groups[0]["lr"]
                        grad_norm = float(accelerator.clip_grad_norm_(trainable, settings.max_grad_norm))
                        if not math.isfinite(grad_norm) and accelerator.scaler is None:
                            raise UserError(
                                f"{desc}: the gradient norm became {grad_norm} at step {step + 1}; nothing was saved "
                                "for that step. Lower the learning rate, or train in fp32 (`lora.mixed_precision: fp32`)."
                            )
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value
                micro += 1
                if not accelerator.sync_gradients:
                    continue
                step += 1
                entry = {"step": step, **{k: v / micro for k, v in sums.items()}, "lr": lr}
                entry["grad_norm"] = grad_norm if math.isfinite(grad_norm) else None
                history.append(entry)
                sums, micro = {}, 0
                progress.update(1)
                progress.set_postfix(loss=f"{entry['loss']:.4g}")
                if on_log is not None and accelerator.is_main_process and step % settings.log_every == 0:
                    on_log(step, entry)
                if step % settings.checkpoint_every == 0 or step == stop_after:
                    t0 = time.perf_counter()
                    save_checkpoint(accelerator, checkpoint_dir, step, history, fingerprint, run_fingerprint)
                    save_seconds += time.perf_counter() - t0
                if step >= end:
                    break
            epoch, skip = epoch + 1, 0
        progress.close()
        accelerator.wait_for_everyone()
        loop_seconds = time.perf_counter() - loop_started - save_seconds
    finally:
        for handle in hooks:
            handle.remove()
        peak_window.__exit__(None, None, None)

    steps_run = step - resumed_from
    return TrainResult(
        model=accelerator.unwrap_model(prepared),
        history=history,
        steps_per_s=steps_run / loop_seconds if steps_run and loop_seconds > 0 else 0.0,
        peak_mem_bytes=peak.peak_bytes,
        resumed_from_step=resumed_from,
        seconds=time.perf_counter() - started,
    )


# ------------------------------------------------------------------------------------ helpers


def _make_optimizer(trainable: list[nn.Parameter], settings: LoopSettings) -> torch.optim.Optimizer:
    if settings.use_8bit_adam and torch.cuda.is_available():
        try:
            import bitsandbytes as bnb  # imported here: only GPU runs with 8-bit Adam need it
        except ImportError:
            raise UserError("use_8bit_adam needs the bitsandbytes package: install it, or set use_8bit_adam: false") from None

        return bnb.optim.AdamW8bit(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.use_8bit_adam:
        log.warning("use_8bit_adam needs CUDA; using torch AdamW on this machine")
    return torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)


def _mean_across_processes(accelerator: Accelerator, loss: torch.Tensor, extras: dict[str, Any]) -> dict[str, float]:
    """Loss and extras of this micro-batch, averaged over processes (one collective per call)."""
    names = ["loss", *sorted(extras)]
    local = torch.stack(
        [loss.detach().float().reshape(())]
        + [torch.as_tensor(extras[k], dtype=torch.float32).detach().reshape(()).to(loss.device) for k in names[1:]]
    )  # (1 + n_extras,)
    gathered = accelerator.gather(local[None])  # (processes, 1 + n_extras)
    return dict(zip(names, gathered.float().mean(dim=0).tolist()))


def _run_fingerprint(fingerprint: str, settings: LoopSettings, num_processes: int) -> str:
    """The caller's fingerprint plus everything in the loop that changes the result."""
    knobs = dataclasses.asdict(settings)
    for irrelevant in ("checkpoint_every", "num_workers", "log_every"):
        knobs.pop(irrelevant)
    blob = json.dumps({"caller": fingerprint, "loop": knobs, "num_processes": num_processes}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
