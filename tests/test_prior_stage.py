"""train_prior on a tiny project, then the RQ generator and `squeezegen sample` on what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_rq import write_tiny_project

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STYLES = ["Cubism", "Fauvism", "Ukiyo_e"]
GENRES = ["portrait", "landscape"]


def add_conditions(root: Path) -> None:
    """style / genre / score columns on the tiny project's processed data, and a tiny prior in its params."""
    import datasets

    folder = root / "data" / "processed"
    data = datasets.load_from_disk(str(folder))
    out = {}
    for split, table in data.items():
        n = len(table)
        table = table.add_column("style", [STYLES[i % 3] for i in range(n)])
        table = table.add_column("genre", [GENRES[i % 2] for i in range(n)])
        out[split] = table.add_column("score", [float(20 + 60 * (i % 2)) for i in range(n)])
    datasets.DatasetDict(out).save_to_disk(str(root / "data" / "processed_new"))
    import shutil

    shutil.rmtree(folder)
    (root / "data" / "processed_new").rename(folder)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["profiles"]["toy"]["prior"].update(width=16, heads=2, spatial_layers=1, depth_width=8, depth_layers=1,
                                              max_steps=6, batch_size=4)
    params["prior"].update(checkpoint_every=3, guidance_scale=2.0)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    import os

    from squeezegen.stages import train_prior, train_rqvae

    root = tmp_path_factory.mktemp("prior")
    write_tiny_project(root)
    add_conditions(root)
    cwd = os.getcwd()
    os.environ["SQUEEZEGEN_MLFLOW"] = "0"
    try:
        os.chdir(root)
        train_rqvae.main()
        train_prior.main()
    finally:
        os.chdir(cwd)
        os.environ.pop("SQUEEZEGEN_MLFLOW", None)
    return root


def test_train_prior_writes_the_model_metrics_and_curve(project):
    from squeezegen.metrics_files import merge_perf
    from squeezegen.rq.prior import load_prior

    prior = load_prior(project / "models/prior")
    assert prior.spec.styles == tuple(sorted(STYLES)) and prior.spec.genres == tuple(sorted(GENRES))
    assert prior.spec.levels == 3 and prior.spec.codebook_size == 16 and prior.spec.positions == 64
    on_disk = json.loads((project / "metrics/prior.json").read_text())
    assert {"train_seconds", "steps_per_s"} <= set(on_disk["perf"])  # timings apart from the quality figures
    metrics = merge_perf(on_disk)
    assert metrics["params"] == sum(p.numel() for p in prior.parameters())
    kind = yaml.safe_load((project / "params.yaml").read_text())["prior"]["kind"]
    assert metrics["kind"] == prior.spec.kind == kind
    codes = sum(side * side for side in prior.spec.scales) if kind == "next_scale" else 64 * 3  # a pyramid, or 8×8 × 3 levels
    assert metrics["codes_per_image"] == prior.spec.tokens == codes and 0 < metrics["val_nll"] < 2 * metrics["uniform_nll"]
    assert metrics["condition_gain_nats"] == pytest.approx(metrics["val_nll_unconditional"] - metrics["val_nll"])
    lines = (project / "metrics/prior_loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss,lr" and len(lines) == 7
    assert not (project / "checkpoints/train_prior").exists()  # cleaned up after success


def test_generator_is_deterministic_and_decodes_every_sample(project):
    from squeezegen.rq.generate import RQGenerator

    gen = RQGenerator.load(project / "models/prior", project / "models/rqvae")
    args = dict(styles=["cubism", "ukiyo-e", None], genres=["portrait", "landscape", None], scores=[80.0, 20.0, None],
                guidance_scale=2.0)
    a, seconds = gen.generate(seed=5, **args)
    b, _ = gen.generate(seed=5, **args)
    assert a.dtype == torch.uint8 and a.shape == (3, 3, 32, 32) and torch.equal(a, b) and seconds > 0
    assert gen.params["prior"] > 0 and gen.bytes_on_disk["prior"] > 0


def test_sample_command_writes_a_grid_and_names_valid_styles(project, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from squeezegen.cli import app

    common = ["--prior", str(project / "models/prior"), "--rqvae", str(project / "models/rqvae"),
              "--params", str(project / "params.yaml"), "--no-refine"]
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(app, ["sample", "--style", "cubism", "--genre", "portrait", "--score", "80", "-n", "4",
                                      "--seed", "0", "--out", str(out), *common])
    assert result.exit_code == 0, result.output
    assert "s per image" in result.output and Image.open(out).size[0] >= 2 * 128
    again = tmp_path / "again.png"  # the default score guidance, given explicitly: the same grid
    guidance = yaml.safe_load((project / "params.yaml").read_text())["prior"]["score_guidance_scale"]
    result = CliRunner().invoke(app, ["sample", "--style", "cubism", "--genre", "portrait", "--score", "80", "-n", "4",
                                      "--seed", "0", "--score-guidance", str(guidance), "--out", str(again), *common])
    assert result.exit_code == 0, result.output
    assert Image.open(again).tobytes() == Image.open(out).tobytes()
    result = CliRunner().invoke(app, ["sample", "--style", "cubism", "--genre", "portrait", "--score", "80", "-n", "4",
                                      "--seed", "0", "--score-guidance", "0", "--out", str(again), *common])
    assert result.exit_code == 0 and Image.open(again).tobytes() != Image.open(out).tobytes()
    result = CliRunner().invoke(app, ["sample", "--style", "surrealism", "--genre", "portrait", "--out", str(out), *common])
    assert result.exit_code == 2 and "Cubism, Fauvism, Ukiyo_e" in result.output


def test_prior_frontier_benchmark_trains_samples_and_writes_its_table(project, tmp_path):
    """benchmarks/prior_frontier.py end to end on the tiny project (an untrained judge and refiner stand in)."""
    from test_benchmark_scripts import load_script

    from squeezegen.config import load_config
    from squeezegen.judge import save_judge
    from squeezegen.judge.train import build_judge
    from squeezegen.rq.refiner import Refiner, save_refiner

    cfg = load_config(project / "params.yaml")
    save_judge(build_judge(cfg.judge, image_size=32, score_mean=50.0, score_std=15.0).eval(), project / "models/judge")
    save_refiner(Refiner.build(channels=[8, 16], image_size=32), project / "models/refiner")
    bench = load_script("prior_frontier")
    out = tmp_path / "frontier.json"
    result = bench.main(["--root", str(project), "--steps", "2", "3", "--score-guidance", "0", "2", "--conditions", "4",
                         "--seeds", "1", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == result and result["conditions"] == 4
    assert [(r["steps"], r["score_guidance_scale"]) for r in result["rows"]] == [(2, 0.0), (2, 2.0), (3, 0.0), (3, 2.0)]
    for row in result["rows"]:
        assert len(row["score_control_by_seed"]) == 2
        assert row["score_control"] == pytest.approx(sum(row["score_control_by_seed"]) / 2)
        assert 0.0 <= row["style_acc"] <= 1.0 and row["fd_judge"] >= 0.0
    assert set(result["perf"]["train_seconds_by_steps"]) == {"2", "3"}
    table = out.with_suffix(".md").read_text().splitlines()
    assert len(table) == 2 + 4 and table[2].startswith("| 2 |")
