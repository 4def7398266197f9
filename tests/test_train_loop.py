"""The shared accelerate training loop: learning, exact resume, NaN stop, fingerprints, accumulation, DDP."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_lora import tiny_art_dataset, tiny_base_dir  # noqa: F401  (shared fixtures)
from torch import nn
from torch.utils.data import TensorDataset

from squeezegen.errors import UserError
from squeezegen.training import LoopSettings, TrainResult, cleanup_checkpoints, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread per module

TRUE_W = torch.tensor([[2.0, -1.0, 0.5]])  # (1, 3)


def regression_dataset(n: int = 40) -> TensorDataset:
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(n, 3, generator=gen)  # (n, 3)
    y = x @ TRUE_W.T + 0.3  # (n, 1)
    return TensorDataset(x, y)


def make_model() -> nn.Module:
    torch.manual_seed(7)
    return nn.Linear(3, 1)


def noisy_mse(model: nn.Module, batch, step: int):
    """MSE plus an input-noise draw from the global RNG, so resume must restore RNG state to match."""
    x, y = batch
    x = x + 0.01 * torch.randn_like(x)  # (B, 3)
    loss = torch.mean((model(x) - y) ** 2)
    return loss, {"abs_err": torch.mean(torch.abs(model(x) - y))}


def settings(**overrides) -> LoopSettings:
    base = dict(max_steps=12, lr=0.05, checkpoint_every=4, seed=3, batch_size=8, lr_scheduler="cosine", warmup_steps=2)
    base.update(overrides)
    return LoopSettings(**base)


def run_train(tmp_path: Path, s: LoopSettings, *, fingerprint: str = "fp", loss_fn=noisy_mse, **kw) -> TrainResult:
    return train(
        model=make_model(), loss_fn=loss_fn, dataset=regression_dataset(), settings=s,
        checkpoint_dir=tmp_path / "ckpt", fingerprint=fingerprint, **kw,
    )


def test_loss_decreases_and_history_is_complete(tmp_path):
    logged = []
    s = settings(max_steps=30, checkpoint_every=100, lr=0.2)
    result = run_train(tmp_path, s, on_log=lambda step, entry: logged.append(step))
    losses = [h["loss"] for h in result.history]
    assert [h["step"] for h in result.history] == list(range(1, 31))
    assert losses[-1] < 0.1 * losses[0]
    assert all("abs_err" in h and "lr" in h and "grad_norm" in h for h in result.history)
    assert result.history[0]["lr"] < result.history[2]["lr"]  # warm-up ramps the rate up
    assert logged == list(range(1, 31))
    assert result.resumed_from_step == 0 and result.steps_per_s > 0 and result.peak_mem_bytes > 0
    assert isinstance(result.model, nn.Linear)


def test_interrupted_run_resumes_exactly(tmp_path, caplog):
    s = settings()
    full = run_train(tmp_path / "a", s)

    # stop at step 7 (not a multiple of checkpoint_every; also mid-epoch: 5 batches per epoch)
    part = run_train(tmp_path / "b", s, stop_after=7)
    assert len(part.history) == 7
    ckpts = sorted(p.name for p in (tmp_path / "b" / "ckpt").iterdir())
    assert ckpts == ["step_7"]  # the newest only; no temporaries left
    with caplog.at_level(logging.WARNING, logger="squeezegen.training"):
        resumed = run_train(tmp_path / "b", s)
    (record,) = [r for r in caplog.records if "resuming" in r.getMessage()]
    assert record.levelno == logging.WARNING  # printed by default, unlike INFO
    assert f"resuming from {tmp_path / 'b' / 'ckpt' / 'step_7'} at step 7 of {s.max_steps}" in record.getMessage()
    assert resumed.resumed_from_step == 7
    assert resumed.history == full.history
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_after_a_crash_uses_the_last_checkpoint(tmp_path):
    s = settings()
    full = run_train(tmp_path / "a", s)

    def crash_at_10(model, batch, step):
        if step == 9:
            raise KeyboardInterrupt
        return noisy_mse(model, batch, step)

    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path / "b", s, loss_fn=crash_at_10)
    (tmp_path / "b" / "ckpt" / ".step_12.tmp").mkdir()  # a save killed half-way
    resumed = run_train(tmp_path / "b", s)
    assert resumed.resumed_from_step == 8
    assert resumed.history == full.history
    assert torch.equal(resumed.model.weight, full.model.weight)


def test_nan_loss_names_the_step_and_saves_nothing(tmp_path):
    def nan_at_step_6(model, batch, step):
        loss, extras = noisy_mse(model, batch, step)
        return (loss * float("nan") if step == 5 else loss), extras

    with pytest.raises(UserError, match=r"step 6\b.*learning rate"):
        run_train(tmp_path, settings(checkpoint_every=2), loss_fn=nan_at_step_6)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_4"]


def test_huge_learning_rate_is_reported_not_trained_through(tmp_path):
    with pytest.raises(UserError, match=r"at step \d+"):
        run_train(tmp_path, settings(lr=1e30, lr_scheduler="constant", warmup_steps=0, max_steps=40, max_grad_norm=1e30))


def test_other_fingerprint_starts_fresh(tmp_path):
    s = settings()
    run_train(tmp_path, s, stop_after=8)
    again = run_train(tmp_path, s, fingerprint="other inputs")
    assert again.resumed_from_step == 0
    # changed loop settings also invalidate the checkpoint, even with the caller's fingerprint unchanged
    run_train(tmp_path, s, stop_after=8)
    changed = run_train(tmp_path, settings(lr=0.01))
    assert changed.resumed_from_step == 0
    state = json.loads(next((tmp_path / "ckpt").glob("step_*/trainer_state.json")).read_text())
    assert state["fingerprint"] == "fp" and state["step"] == 12
    cleanup_checkpoints(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_gradient_accumulation_matches_a_double_batch(tmp_path):
    """grad_accum=2 with batch 4 takes the same steps as batch 8 without accumulation (deterministic loss)."""

    def mse(model, batch, step):
        x, y = batch
        return torch.mean((model(x) - y) ** 2)

    big = run_train(tmp_path / "a", settings(batch_size=8, max_steps=5), loss_fn=mse)
    # EpochPermutationSampler gives both the same index order; 2 micro-batches of 4 = 1 batch of 8
    accum = run_train(tmp_path / "b", settings(batch_size=4, grad_accum=2, max_steps=5), loss_fn=mse)
    assert len(accum.history) == 5
    for a, b in zip(big.history, accum.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert torch.allclose(big.model.weight, accum.model.weight, atol=1e-6)


DDP_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import datasets
    import torch.distributed as dist

    from squeezegen.sd.lora import LoraSettings, train_lora

    base, data, out, ckpt, report = map(Path, sys.argv[1:6])
    settings = LoraSettings(rank=2, alpha=2, target_modules=("to_q", "to_k", "to_v", "to_out.0"), lr=1e-3,
                            max_steps=2, batch_size=2, checkpoint_every=1, seed=0, resolution=32)
    result = train_lora(base_dir=base, dataset=datasets.load_from_disk(str(data)), settings=settings, out_dir=out,
                        checkpoint_dir=ckpt, fingerprint="ddp")
    losses = json.dumps([h["loss"] for h in result.train.history])
    # A file per rank, not stdout: the launcher relays workers' output asynchronously, and under
    # load a short run can end before a line is relayed.
    line = f"RANK {dist.get_rank()} WORLD {dist.get_world_size()} {dist.get_backend()} LOSSES {losses}"
    (report / f"rank{dist.get_rank()}.txt").write_text(line)
    """
)


def free_port() -> int:
    """A TCP port nobody listens on now (a fixed rendezvous port collides when two test runs
    share a machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
def test_accelerate_launch_two_cpu_processes_trains_lora(tmp_path, tiny_base_dir, tiny_art_dataset):
    """Two gloo processes on the CPU. `accelerate launch --cpu` spawns several processes only through mpirun;
    `--multi_gpu` with ACCELERATE_USE_CPU=1 starts them torchrun-style, and accelerate then picks MULTI_CPU/gloo."""
    script = tmp_path / "ddp_lora.py"
    script.write_text(DDP_SCRIPT)
    out, report = tmp_path / "lora", tmp_path / "ranks"
    report.mkdir()
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(script), str(tiny_base_dir), str(tiny_art_dataset), str(out), str(tmp_path / "ckpt"), str(report),
    ]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=170, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    lines = sorted(f.read_text() for f in report.glob("rank*.txt"))
    assert [line.split(" LOSSES ")[0] for line in lines] == ["RANK 0 WORLD 2 gloo", "RANK 1 WORLD 2 gloo"], proc.stderr[-5000:]
    losses = {line.split(" LOSSES ")[1] for line in lines}
    assert len(losses) == 1 and len(json.loads(losses.pop())) == 2  # both ranks log the same cross-process mean loss
    assert sorted(p.name for p in out.iterdir()) == ["pytorch_lora_weights.safetensors"]
