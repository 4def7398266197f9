"""Budget allocation of K-quant types per tensor: the budget, the candidates, the kept tensors, the
unlimited case, and a mixed tiny-UNet file that loads, runs and decodes like gguf-py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from gguf.quants import dequantize as gguf_dequantize
from test_quant_runtime import tiny_unet  # noqa: F401  (fixture: a random tiny UNet and its inputs)

from squeezegen.errors import UserError
from squeezegen.quant.codecs.registry import codec
from squeezegen.quant.mix.importance import Calibration
from squeezegen.quant.mix.knapsack import allocate
from squeezegen.quant.mix.policy import QuantPolicy
from squeezegen.quant.mix.sensitivity import TensorChoices

TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")


def _random_choices(rng, n=12):
    choices = {}
    for i in range(n):
        numel = 256 * int(rng.integers(1, 40))
        types = [t for t in TYPES if rng.random() < 0.8] or ["Q4_K"]
        # damage falls with bits, with noise: not always convex, sometimes dominated
        damage = {t: float(rng.uniform(0.5, 2) * 2.0 ** (-codec(t).bits_per_weight) * numel) for t in types}
        choices[f"t{i}"] = TensorChoices(f"t{i}", (numel // 256, 256), types,
                                         {t: codec(t).nbytes(numel) for t in types}, damage=damage)
    return choices


def _bytes(choices, pick, fixed=0):
    return fixed + sum(choices[n].nbytes[t] for n, t in pick.items())


def test_budget_is_respected_and_candidates_only(rng=np.random.default_rng(0)):
    for trial in range(20):
        choices = _random_choices(rng)
        lo = _bytes(choices, {n: min(c.types, key=c.nbytes.get) for n, c in choices.items()}, 1000)
        hi = _bytes(choices, {n: max(c.types, key=c.nbytes.get) for n, c in choices.items()}, 1000)
        for budget in np.linspace(lo, hi, 7).astype(int):
            pick = allocate(choices, int(budget), fixed_bytes=1000)
            assert _bytes(choices, pick, 1000) <= budget
            assert all(pick[n] in c.types for n, c in choices.items())
        with pytest.raises(UserError, match="below the smallest UNet"):
            allocate(choices, lo - 1, fixed_bytes=1000)


def test_unlimited_budget_picks_the_least_damage_everywhere(rng=np.random.default_rng(1)):
    choices = _random_choices(rng)
    pick = allocate(choices, None)
    assert pick == {n: min(c.types, key=lambda t: (c.damage[t], c.nbytes[t])) for n, c in choices.items()}


def test_allocation_is_the_exact_optimum_on_small_cases(rng=np.random.default_rng(2)):
    """Brute force over every assignment of 5 tensors: the allocation is the optimum."""
    worst = 1.0
    for trial in range(10):
        choices = _random_choices(rng, n=5)
        names = list(choices)
        combos = list(itertools.product(*(choices[n].types for n in names)))
        sizes = sorted({_bytes(choices, dict(zip(names, c))) for c in combos})
        budget = sizes[len(sizes) // 2]
        best = min(sum(choices[n].damage[t] for n, t in zip(names, c)) for c in combos
                   if _bytes(choices, dict(zip(names, c))) <= budget)
        pick = allocate(choices, budget)
        worst = max(worst, sum(choices[n].damage[t] for n, t in pick.items()) / best)
    assert worst <= 1 + 1e-9


def test_mixed_tiny_unet_keeps_f16_tensors_loads_runs_and_decodes_like_gguf(tiny_unet, tmp_path):
    from diffusers import UNet2DConditionModel
    from test_quant_runtime import TINY_UNET, run

    from squeezegen.quant.gguf.io import read_gguf, write_unet_gguf
    from squeezegen.quant.gguf.unet_loader import load_gguf_unet
    from squeezegen.quant.mix.assign import estimate_mix, mixed_policy, summary

    unet, folder, inputs, _ = tiny_unet
    policy = QuantPolicy()
    calib = Calibration(inputs=dict(zip(("sample", "timestep", "encoder_hidden_states"), inputs)), importance={})
    mix = estimate_mix(unet, calib, policy, types=TYPES, mode="proxy", progress=False)
    state = unet.state_dict()
    for name in ("time_embedding.linear_1.weight", "conv_in.weight", "down_blocks.0.resnets.0.norm1.weight"):
        assert name in mix.fixed and mix.fixed[name].qtype.name == "F16"
    narrow = "down_blocks.0.resnets.0.conv1.weight"  # 32·32·9 = 9216 = 36 × 256; conv_out's 4·32·9 = 1152 is kept
    assert state[narrow].numel() % 256 == 0 and set(mix.choices[narrow].types) == set(TYPES)
    for name, c in mix.choices.items():  # a type is offered only if the tensor holds whole blocks of it
        assert all(state[name].numel() % codec(t).block_size == 0 for t in c.types)

    budget = (mix.tensor_bytes({n: "Q3_K" if "Q3_K" in c.types else c.types[0] for n, c in mix.choices.items()})
              + mix.tensor_bytes({n: "Q4_K" if "Q4_K" in c.types else c.types[0] for n, c in mix.choices.items()})) // 2
    types = mix.allocate(budget)
    assert mix.tensor_bytes(types) <= budget and len(set(types.values())) >= 2
    path = tmp_path / "mixed.gguf"
    report = write_unet_gguf(path, state, policy=mixed_policy(policy, types), progress=False, encoded=mix.cache)
    assert sum(t.bytes for t in report.tensors) == mix.tensor_bytes(types) == summary(mix, types)["tensor_bytes"]
    tensors, _ = read_gguf(path)  # passes the file's own policy check (tensor_types in its JSON)
    assert {n: tensors[n].qtype.name for n in types} == types
    assert all(tensors[n].qtype.name == "F16" for n in mix.fixed if mix.fixed[n].qtype.name == "F16")
    decoded = UNet2DConditionModel(**TINY_UNET).eval()
    decoded.load_state_dict({n: torch.from_numpy(gguf_dequantize(np.array(t.data), t.qtype).reshape(t.shape))
                             for n, t in tensors.items()})
    loaded = load_gguf_unet(path, config=folder)
    torch.testing.assert_close(run(loaded, inputs), run(decoded, inputs), rtol=1e-4, atol=1e-5)
