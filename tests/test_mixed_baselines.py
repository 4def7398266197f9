"""The baselines of the mixed K-quant allocation (quant/mixed.py, quant/baselines.py): uniform and
rule assignments, decoded weights equal to what the file holds, drift, and the matched-bytes
comparison; plus benchmarks/sd15_mixed.py --small end to end."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from gguf.quants import dequantize as gguf_dequantize
from test_quant_runtime import tiny_unet  # noqa: F401  (fixture: a random tiny UNet and its inputs)

from squeezegen.quant.codecs.registry import codec
from squeezegen.quant.mix.assign import Mix, rule_types, summary, weights_swapped
from squeezegen.quant.mix.importance import Calibration
from squeezegen.quant.mix.policy import QuantPolicy, choose_type
from squeezegen.quant.mix.sensitivity import TensorChoices

TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")


def _choices(names, types=TYPES, numel=512):
    return {n: TensorChoices(n, (numel // 256, 256), list(types), {t: codec(t).nbytes(numel) for t in types})
            for n in names}


def test_rule_types_promote_to_v_ff_out_and_the_first_and_last_blocks():
    blocks = ["down_blocks.0.resnets.0.conv1.weight", "up_blocks.3.attentions.2.proj_out.weight"]
    promoted = ["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v.weight",
                "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight"]
    plain = ["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",
             "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
             "up_blocks.2.resnets.0.conv1.weight", "mid_block.resnets.0.conv1.weight"]
    choices = _choices(blocks + promoted + plain)
    no_q5 = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight"
    choices |= _choices([no_q5], types=("Q3_K", "Q6_K", "Q8_0"))  # no Q5_K (176 B a block): nearest, Q6_K (210)
    mix = Mix(choices, {}, {})
    types = rule_types(mix, base="Q3_K", promote="Q5_K")  # the last up block is found: up_blocks.3
    assert {n: types[n] for n in blocks + promoted} == dict.fromkeys(blocks + promoted, "Q5_K")
    assert {n: types[n] for n in plain} == dict.fromkeys(plain, "Q3_K")
    assert types[no_q5] == "Q6_K"
    comfy = rule_types(mix, base="Q4_K", promote="Q6_K", blocks=False)
    assert {n for n, t in comfy.items() if t == "Q6_K"} == set(promoted) | {no_q5}


@pytest.fixture(scope="module")
def mixed(tiny_unet):
    """(unet, folder, mix, policy, held-out inputs) of the tiny UNet with proxy damages."""
    from squeezegen.quant.mix.assign import estimate_mix

    unet, folder, inputs, _ = tiny_unet
    policy = QuantPolicy()
    calib = Calibration(inputs=dict(zip(("sample", "timestep", "encoder_hidden_states"), inputs)), importance={})
    mix = estimate_mix(unet, calib, policy, types=TYPES, mode="proxy", progress=False)
    g = torch.Generator().manual_seed(1)
    heldout = {"sample": torch.randn(3, 4, 8, 8, generator=g), "timestep": torch.tensor([50, 400, 900]),
               "encoder_hidden_states": torch.randn(3, 7, 256, generator=g)}
    return unet, folder, mix, policy, heldout


def test_uniform_types_and_summary_match_the_uniform_file(mixed, tmp_path):
    from squeezegen.quant.gguf.io import write_unet_gguf
    from squeezegen.quant.mix.assign import uniform_types

    unet, _, mix, policy, _ = mixed
    for qtype in ("Q3_K", "Q4_K"):
        uni = dataclasses.replace(policy, unet_type=qtype)
        types = uniform_types(mix, qtype, policy)
        assert types == {n: choose_type(n, c.shape, uni).qtype.name for n, c in mix.choices.items()}
        report = write_unet_gguf(tmp_path / f"{qtype}.gguf", unet.state_dict(), policy=uni, progress=False)
        s = summary(mix, types)
        assert s["tensor_bytes"] == sum(t.bytes for t in report.tensors)
        assert math.isclose(s["bpw"], 8 * s["tensor_bytes"] / sum(t.n_params for t in report.tensors))
        assert math.isclose(sum(s["param_share"].values()), 1.0) and s["param_share"][qtype] > 0.9


def test_weights_for_are_the_files_weights_and_drift_is_measured_on_them(mixed, tmp_path):
    from diffusers import UNet2DConditionModel

    from squeezegen.quant.gguf.io import read_gguf, write_unet_gguf
    from squeezegen.quant.mix.assign import mixed_policy, output_drift, weights_for
    from squeezegen.quant.mix.importance import unet_output

    unet, folder, mix, policy, heldout = mixed
    types = rule_types(mix)
    path = tmp_path / "rule.gguf"
    write_unet_gguf(path, unet.state_dict(), policy=mixed_policy(policy, types), progress=False, encoded=mix.cache)
    tensors, _ = read_gguf(path)
    weights = weights_for(unet, mix, types, policy)
    quantized = {n for n, t in tensors.items() if t.qtype.name not in ("F16", "F32")}
    assert set(weights) == quantized
    for name in quantized:
        t = tensors[name]
        np.testing.assert_array_equal(weights[name].numpy(), gguf_dequantize(np.array(t.data), t.qtype).reshape(t.shape))

    before = {k: v.clone() for k, v in unet.state_dict().items()}
    reference = unet_output(unet, heldout)
    drift = output_drift(unet, weights, heldout, reference)
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())  # swapped back
    decoded = copy.deepcopy(unet)
    decoded.load_state_dict({**before, **weights})
    expected = unet_output(decoded, heldout)
    assert math.isclose(drift, float((expected - reference).norm() / reference.norm()), rel_tol=1e-5)
    assert 0 < drift < 1
    with weights_swapped(unet, weights):
        assert torch.equal(unet.get_parameter(next(iter(weights))), weights[next(iter(weights))])
    assert isinstance(decoded, UNet2DConditionModel)


def test_allocation_at_each_baselines_bytes_fits_and_is_no_worse_by_its_own_estimate(mixed):
    from squeezegen.quant.mix.baselines import baseline_assignments, compare_at_matched_bytes, snr_db

    unet, _, mix, policy, heldout = mixed
    result = compare_at_matched_bytes(unet, mix, policy, heldout, extra={"q8": {n: "Q8_0" for n in mix.choices}})
    assert result["heldout_samples"] == 3 and result["q8"]["noise_rel_rmse"] < 0.05
    for label, types in baseline_assignments(mix, policy).items():
        row = result[label]
        assert row["budget_bytes"] == row["baseline"]["tensor_bytes"] == mix.tensor_bytes(types)
        assert row["allocation"]["tensor_bytes"] <= row["budget_bytes"]
        # the baseline is one feasible assignment at that budget; the DP's optimum cannot be worse
        assert row["allocation"]["est_damage"] <= row["baseline"]["est_damage"] * (1 + 1e-9)
        for side in ("baseline", "allocation"):
            assert math.isclose(row[side]["noise_snr_db"], snr_db(row[side]["noise_rel_rmse"]))
        assert row["allocation_lower_noise_drift"] == (row["allocation"]["noise_rel_rmse"] < row["baseline"]["noise_rel_rmse"])
    sizes = [result[k]["budget_bytes"] for k in ("uniform_Q3_K", "rule_Q3_K_M", "uniform_Q4_K")]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3


def test_psnr_and_snr():
    from squeezegen.quant.mix.baselines import heldout_prompt_indices, psnr_db, snr_db

    a = np.zeros((2, 4, 4, 3))
    assert psnr_db(a, a) == math.inf and math.isclose(psnr_db(a, a + 0.1), 20.0)
    assert math.isclose(snr_db(0.1), 20.0) and snr_db(0.0) == math.inf
    assert heldout_prompt_indices(3) == [1, 3, 5]


def test_sd15_mixed_small_writes_every_baseline(tmp_path):
    from test_benchmark_scripts import load_script

    bench = load_script("sd15_mixed")
    out = tmp_path / "mixed.json"
    figures = bench.main(["--small", "--prompts", "1", "--steps", "1", "--sensitivity-samples", "1", "--no-images",
                          "--types", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "--budget-bpw", "4.0", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["results"]["heldout_samples"] == 2 and "perf" in saved  # 1 prompt × 2 (guidance) × 1 step
    results = figures["results"]
    assert results["budget"]["tensor_bytes"] <= results["budget"]["budget_bytes"]
    for label in ("uniform_Q4_K", "rule_Q4_K_M", "rule_Q3_K_M", "uniform_Q3_K"):
        assert results[label]["allocation"]["tensor_bytes"] <= results[label]["baseline"]["tensor_bytes"]
        assert set(results[label]["allocation"]["param_share"]) <= {"F16", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"}
