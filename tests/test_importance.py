"""Activation importance: statistics per input channel, their layout in stored rows, the calibration
run on a tiny pipeline, and the importance reaching the codecs through the policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_quant_runtime import tiny_unet  # noqa: F401  (fixture: a random tiny UNet and its inputs)
from torch import nn

from squeezegen.errors import UserError
from squeezegen.quant.gguf.io import read_gguf, write_unet_gguf
from squeezegen.quant.mix.importance import activation_stats, calibrate, expand_importance
from squeezegen.quant.mix.policy import QuantPolicy, choose_type


def test_stats_are_mean_squares_per_input_channel():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(2), nn.Linear(25, 6))
    x1, x2 = torch.randn(2, 3, 5, 5), 3 * torch.randn(1, 3, 5, 5)
    with activation_stats(model) as stats, torch.no_grad():
        model(x1), model(x2)
    got = stats.mean_squares()
    x = torch.cat([x1, x2])
    np.testing.assert_allclose(got["0.weight"], (x**2).mean(dim=(0, 2, 3)).numpy(), rtol=1e-5)
    h = model[1](model[0](x)).detach()  # [3, 4, 25]: the Linear's inputs
    np.testing.assert_allclose(got["2.weight"], (h**2).reshape(-1, 25).mean(dim=0).numpy(), rtol=1e-5)
    with torch.no_grad():
        model(x1)
    assert stats.mean_squares().keys() == got.keys()  # hooks removed on exit: nothing more counted


def test_expanded_importance_follows_the_reshaped_conv_rows():
    v = np.arange(1, 9, dtype=np.float32)  # 8 input channels
    out = expand_importance(v, (32, 8, 3, 3), (9, 256))  # 2304 weights stored as 9 rows of 256
    flat = np.arange(2304)
    channel = (flat // 9) % 8  # C order: ((o·8 + c)·3 + kh)·3 + kw
    np.testing.assert_allclose(out.reshape(-1), v[channel] / v.mean())
    linear = expand_importance(np.array([0.0, 2.0]), (3, 2), (3, 2))
    assert linear.shape == (3, 2) and linear[0, 0] > 0 and linear[0, 1] == pytest.approx(2.0)  # floor, mean 1
    with pytest.raises(UserError, match="input channels"):
        expand_importance(v, (32, 4, 3, 3), (9, 128))


def test_calibration_records_every_layer_and_every_step():
    from squeezegen.sd.tiny import build_tiny_pipeline

    torch.manual_seed(0)
    pipe = build_tiny_pipeline(seed=0)
    calib = calibrate(pipe, ["a red square", "a blue circle"], steps=3, size=32, seed=0, guidance_scale=7.5)
    assert calib.n_samples == 2 * 2 * 3  # prompts × (uncond, cond) × steps
    assert calib.inputs["sample"].shape == (12, 4, 4, 4) and len(set(calib.inputs["timestep"].tolist())) == 3
    layers = {f"{n}.weight" for n, m in pipe.unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert set(calib.importance) == layers
    for name, v in calib.importance.items():
        assert v.shape == (pipe.unet.get_parameter(name).shape[1],) and np.isfinite(v).all() and (v >= 0).all()


def test_policy_importance_reaches_the_codecs(tiny_unet, tmp_path):
    """Weighting half the input channels ×1000 makes their error smaller than with no importance."""
    unet, _, _, _ = tiny_unet
    state = unet.state_dict()
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"  # [32, 256]: Q4_K rows
    v = np.ones(state[name].shape[1], dtype=np.float32)
    v[::2] = 1000.0
    policy = QuantPolicy(unet_type="Q3_K")
    assert "importance" not in policy.to_json()
    errors = {}
    for label, pol in {"plain": policy, "weighted": QuantPolicy(unet_type="Q3_K", importance={name: v})}.items():
        path = tmp_path / f"{label}.gguf"
        write_unet_gguf(path, state, policy=pol, progress=False)
        tensors, _ = read_gguf(path)  # the file passes its own policy check either way
        diff = tensors[name].dequantize() - state[name].numpy()
        errors[label] = (diff[:, ::2] ** 2).sum(), (diff[:, 1::2] ** 2).sum()
    assert choose_type(name, tuple(state[name].shape), policy).qtype.name == "Q3_K"
    assert errors["weighted"][0] < 0.9 * errors["plain"][0]  # the weighted channels got better
    assert errors["weighted"][1] > errors["plain"][1]  # paid for by the others
