"""A diverged training run tells the user the option that exists: `mixed_precision: fp32`, not accelerate's "no"."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from squeezegen.errors import UserError
from squeezegen.training import LoopSettings, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def nan_loss(model, batch, step):
    x, y = batch
    return torch.mean((model(x) - y) ** 2) * float("nan")


def nan_gradient(model, batch, step):
    x, _ = batch
    return torch.sqrt(model(x) * 0.0).sum()  # loss 0, but d sqrt(u)/du at u = 0 is inf, times 0: NaN


@pytest.mark.parametrize("loss_fn,what", [(nan_loss, "the loss"), (nan_gradient, "the gradient norm")])
def test_divergence_suggests_the_fp32_option_by_its_current_name(tmp_path, loss_fn, what):
    torch.manual_seed(0)
    dataset = TensorDataset(torch.randn(8, 3), torch.randn(8, 1))
    settings = LoopSettings(max_steps=2, lr=0.01, checkpoint_every=1, seed=0, batch_size=4)
    with pytest.raises(UserError) as err:
        train(model=nn.Linear(3, 1), loss_fn=loss_fn, dataset=dataset, settings=settings,
              checkpoint_dir=tmp_path / "ckpt", fingerprint="fp")
    message = str(err.value)
    assert message.startswith(f"train: {what} became") and "step 1" in message
    assert "lora.mixed_precision: fp32" in message and '"no"' not in message
