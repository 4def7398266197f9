"""End to end: the whole toy DAG through DVC in a temporary copy of the repo.

One `dvc repro` builds everything; the tests then check what a user would: every output and
declared plot exists, a second repro runs nothing, an RQ-only experiment re-runs only the RQ
stages and `dvc metrics diff` shows RQ metrics (and no SD metric) changing, MLflow holds one
run per stage sharing a pipeline tag, and the GGUF decodes identically with the gguf package.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import dvc, make_repo_copy, ran_stages, run

pytestmark = pytest.mark.slow

STAGES = {"check_params", "fetch_data", "preprocess", "fetch_base", "finetune_lora", "quantize", "benchmark",
          "train_rqvae", "train_refiner", "train_judge", "train_prior", "evaluate"}
RQ_STAGES = {"train_rqvae", "train_refiner", "train_prior", "evaluate"}


# What these tests check (wiring, caching, lineage, byte-identical re-runs) does not depend on how
# long the models train, so the copy trains each for at most this many steps: the DAG and its
# `rqvae.levels=2` experiment then fit the CI budget. The quality figures come from `make repro`.
E2E_MAX_STEPS = 40
E2E_GEN_SAMPLES = 8


def shorten_toy_training(params: Path) -> None:
    """Cap every `max_steps` (and the base's pretraining steps) and `gen_samples` of the toy profile in `params` (a text edit: the
    comments and layout the other tests edit stay as they are)."""
    lines = params.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("  toy:"))
    end = next(i for i, line in enumerate(lines) if i > start and re.match(r"  \w", line))
    for i in range(start, end):
        lines[i] = re.sub(r"((?:max|vae|unet)_steps:\s*)(\d+)", lambda m: m[1] + str(min(int(m[2]), E2E_MAX_STEPS)), lines[i])
        lines[i] = re.sub(r"(gen_samples:\s*)(\d+)", lambda m: m[1] + str(min(int(m[2]), E2E_GEN_SAMPLES)), lines[i])
    params.write_text("".join(lines))
    toy_profile = yaml.safe_load(params.read_text())["profiles"]["toy"]
    assert all(section.get(key, 0) <= E2E_MAX_STEPS for section in toy_profile.values()
               for key in ("max_steps", "vae_steps", "unet_steps")), toy_profile


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    repo = make_repo_copy(tmp_path_factory.mktemp("e2e"))
    shorten_toy_training(repo / "params.yaml")
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "shorter training"], cwd=repo)
    first = dvc("repro", cwd=repo)
    assert ran_stages(first.stdout) == STAGES, first.stdout
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "toy results"], cwd=repo)
    return repo


def _declared_files(repo: Path) -> list[Path]:
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())
    files = []
    for stage in spec["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                files.append(repo / (entry if isinstance(entry, str) else next(iter(entry))))
    for entry in spec.get("plots", []):
        if isinstance(entry, str):
            files.append(repo / entry)
    return files


def test_every_declared_output_exists_and_is_not_empty(toy):
    for path in _declared_files(toy):
        assert path.exists(), f"{path.relative_to(toy)} missing"
        if path.is_file():
            assert path.stat().st_size > 0, f"{path.relative_to(toy)} is empty"
        else:
            assert any(path.iterdir()), f"{path.relative_to(toy)} is an empty folder"
    report = (toy / "reports/report.md").read_text()
    for picture in ("evaluate/sd_samples.png", "refiner/progressive.png", "benchmark/memory.png"):
        assert picture in report and (toy / "reports" / picture).is_file()


def test_headline_numbers_are_sane(toy):
    head = json.loads((toy / "metrics/evaluate.json").read_text())
    assert 0 < head["sd"]["unet_bpw"] < 16 and head["sd"]["unet_bytes_gguf"] < head["sd"]["unet_bytes_fp16"]
    assert head["rq"]["levels"] == 4 and head["rq"]["bits_per_image"] > 0
    rq = json.loads((toy / "metrics/rqvae.json").read_text())
    assert len(rq["psnr_by_levels"]) == len(rq["codebook_usage"]) == len(rq["perplexity"]) == 4


def test_gguf_decodes_identically_with_the_gguf_package(toy):
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize

    from squeezegen.quant.gguf.io import read_gguf

    ours, _ = read_gguf(toy / "models/quantized/unet.gguf")
    q4k = 0
    for tensor in GGUFReader(toy / "models/quantized/unet.gguf").tensors:
        if tensor.tensor_type == GGMLQuantizationType.Q4_K:
            q4k += 1
            theirs = dequantize(tensor.data, tensor.tensor_type).reshape(-1)
            assert np.array_equal(ours[tensor.name].dequantize().reshape(-1), theirs), tensor.name
    assert q4k > 10


def test_second_repro_runs_nothing(toy):
    again = dvc("repro", cwd=toy)
    assert ran_stages(again.stdout) == set(), again.stdout


def _lock_md5s(repo: Path) -> dict[str, dict[str, str]]:
    """{stage: {"dep.<path>" / "out.<path>": md5}} from dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {stage: {f"{kind}.{e['path']}": e["md5"] for kind in ("dep", "out") for e in entry.get(f"{kind}s", [])}
            for stage, entry in lock.items()}


def _without_perf(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k != "perf"}


def test_each_mlflow_run_is_tagged_with_the_dvc_md5_of_its_deps_and_outs(toy):
    import hashlib
    from importlib import metadata

    with sqlite3.connect(toy / "mlflow.db") as db:
        rows = db.execute("SELECT t.run_uuid, t.key, t.value FROM tags t").fetchall()
    runs: dict[str, dict[str, str]] = {}
    for run_id, key, value in rows:
        runs.setdefault(run_id, {})[key] = value
    by_stage = {tags["stage"]: tags for tags in runs.values() if "stage" in tags}
    for stage, expected in _lock_md5s(toy).items():
        if stage == "check_params":  # a params check that trains nothing keeps no MLflow run
            continue
        tags = by_stage[stage]
        got = {key.removeprefix("dvc."): value for key, value in tags.items() if key.startswith("dvc.")}
        assert got == expected, stage
        assert tags["lock_sha256"] == hashlib.sha256((toy / "requirements.lock").read_bytes()).hexdigest()
        assert tags["pkg.torch"] == metadata.version("torch") and tags["pkg.diffusers"] == metadata.version("diffusers")


def test_forced_reruns_give_byte_identical_outputs_and_quality_metrics(toy):
    before = _lock_md5s(toy)
    metrics_before = {name: _without_perf(toy / f"metrics/{name}.json") for name in ("data", "quantize")}
    for stage in ("preprocess", "quantize"):
        assert ran_stages(dvc("repro", "-f", "-s", stage, cwd=toy).stdout) == {stage}
    after = _lock_md5s(toy)
    for stage in ("preprocess", "quantize"):
        # every dep and out byte for byte, except the metrics files: their `perf` timings differ
        same = {k: v for k, v in before[stage].items() if not k.startswith("out.metrics/")}
        assert {k: after[stage][k] for k in same} == same, stage
    for name, values in metrics_before.items():
        assert _without_perf(toy / f"metrics/{name}.json") == values, name
    # back to the committed state (the outputs are the same bytes; only perf timings moved), so the
    # tests below see no stage changed by this one
    run(["git", "checkout", "HEAD", "--", "dvc.lock", "metrics"], cwd=toy)  # HEAD: dvc's autostage staged the new lock
    assert ran_stages(dvc("repro", cwd=toy).stdout) == set()


def test_dvc_status_flags_exactly_the_stages_that_import_a_changed_module(toy):
    from squeezegen.stagedeps import import_closure

    spec = yaml.safe_load((toy / "dvc.yaml").read_text())["stages"]
    closures = {name: import_closure(toy, Path(stage["cmd"].split()[1])) for name, stage in spec.items()}
    for module in ("src/squeezegen/image_metrics.py", "src/squeezegen/seed.py", "src/squeezegen/data/captions.py",
                   "src/squeezegen/rq/model.py", "src/squeezegen/tracking.py"):
        path = toy / module
        original = path.read_text()
        path.write_text(original + "\n# changed\n")
        try:
            status = json.loads(dvc("status", "--json", cwd=toy).stdout)
        finally:
            path.write_text(original)
        expected = {name for name, closure in closures.items() if Path(module) in closure}
        assert expected and set(status) == expected, (module, sorted(status), sorted(expected))


def test_lora_rank_only_touches_the_lora_stage(toy):
    params = toy / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("rank: 4 ", "rank: 8 "))
    try:
        status = json.loads(dvc("status", "--json", cwd=toy).stdout)
    finally:
        params.write_text(original)
    assert "finetune_lora" in status
    assert not {"fetch_base", "preprocess", "fetch_data"} & set(status)


def test_a_pretraining_knob_reruns_the_sd_branch_and_evaluate_only(toy):
    params = toy / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("  caption_dropout: 0.1 ", "  caption_dropout: 0.2 ", 1))
    try:
        status = json.loads(dvc("status", "--json", cwd=toy).stdout)
    finally:
        params.write_text(original)
    assert set(status) == {"check_params", "fetch_base"}, status  # DVC flags the stage whose params changed …
    stages = yaml.safe_load((toy / "dvc.yaml").read_text())["stages"]
    outs = {name: {next(iter(o)) if isinstance(o, dict) else o for kind in ("outs", "metrics", "plots") for o in st.get(kind, [])}
            for name, st in stages.items()}
    downstream, frontier = set(), {"fetch_base"}
    while frontier:  # … and its new outputs re-run every stage that reads them, transitively
        made = set().union(*(outs[name] for name in frontier))
        frontier = {name for name, st in stages.items() if name not in downstream and set(st.get("deps", [])) & made}
        downstream |= frontier
    assert downstream == {"finetune_lora", "quantize", "benchmark", "evaluate"}, downstream


def test_guidance_is_applied_at_sampling_time_only(toy):
    params = toy / "params.yaml"
    original = params.read_text()
    assert "  guidance_scale: 3.0 " in original
    params.write_text(original.replace("  guidance_scale: 3.0 ", "  guidance_scale: 1.5 ", 1))
    try:
        status = json.loads(dvc("status", "--json", cwd=toy).stdout)
    finally:
        params.write_text(original)
    assert set(status) == {"check_params", "evaluate"}, status


def test_generation_section_and_keys(toy):
    head = json.loads((toy / "metrics/evaluate.json").read_text())
    gen = head["gen"]
    for name in ("real_train", "rq_prior", "rq_prior_norefine", "rq_marginal", "sd_base", "sd", "sd_compressed"):
        assert 0 <= gen[name]["genre_acc"] <= 1 and gen[name]["fd_judge"] >= 0, name
    for name in ("rq_prior", "sd_base", "sd", "sd_compressed"):  # each generator's own score control
        assert gen[name]["score_control"] == pytest.approx(gen[name]["score_high"] - gen[name]["score_low"]), name
    assert gen["rq_prior"]["params"] == sum(gen["rq_prior"]["params_by_model"].values())
    assert "seconds_per_image" in head["perf"]["gen"]["rq_prior"]  # timing apart from the quality figures
    report = (toy / "reports/report.md").read_text()
    assert "## C. Generation" in report and "evaluate/generation.png" in report and "pretrained here" in report


def test_mlflow_has_one_run_per_stage_with_a_shared_tag(toy):
    with sqlite3.connect(toy / "mlflow.db") as db:
        rows = db.execute(
            "SELECT r.run_uuid, t1.value, t2.value FROM runs r "
            "JOIN tags t1 ON t1.run_uuid = r.run_uuid AND t1.key = 'stage' "
            "JOIN tags t2 ON t2.run_uuid = r.run_uuid AND t2.key = 'pipeline_run'"
        ).fetchall()
    by_pipeline: dict[str, list[str]] = {}
    for _, stage, pipe in rows:
        by_pipeline.setdefault(pipe, []).append(stage)
    # the first `dvc repro` ran every stage under one pipeline_run id, one MLflow run each (check_params makes none)
    assert sorted(STAGES - {"check_params"}) in [sorted(stages) for stages in by_pipeline.values()], by_pipeline


def test_rq_experiment_reruns_only_rq_stages_and_diff_shows_rq_metrics(toy):
    exp = dvc("exp", "run", "-S", "rqvae.levels=2", cwd=toy)
    assert ran_stages(exp.stdout) == RQ_STAGES | {"check_params"}, exp.stdout
    diff = dvc("metrics", "diff", "--json", cwd=toy)
    changed = json.loads(diff.stdout)
    assert "metrics/rqvae.json" in changed and "metrics/refiner.json" in changed
    for sd_file in ("metrics/lora.json", "metrics/quantize.json", "metrics/benchmark.json"):
        assert sd_file not in changed, f"{sd_file} changed in an RQ-only experiment"
    head = changed.get("metrics/evaluate.json", {})
    quality = [key for key in head if not key.startswith("perf.")]  # timings move between any two runs
    assert quality and all(key.startswith(("rq.", "gen.rq_")) for key in quality), head
    assert json.loads((toy / "metrics/rqvae.json").read_text())["bits_per_image"] < \
        json.loads(run(["git", "show", "HEAD:metrics/rqvae.json"], cwd=toy).stdout)["bits_per_image"]


def test_both_prior_kinds_train_evaluate_and_sample_and_the_kind_reruns_only_the_prior(toy, tmp_path):
    """Equal-scale RQ-VAE codes can feed either prior: the RQ-Transformer, then the next-scale one.
    The second experiment changes only `prior.kind`, so only train_prior and evaluate re-run."""
    from PIL import Image
    from typer.testing import CliRunner

    from squeezegen.cli import app

    params = yaml.safe_load((toy / "params.yaml").read_text())
    first = dvc("exp", "run", "-S", "rqvae.scales=equal", "-S", "prior.kind=rq_transformer", cwd=toy)
    if params["rqvae"]["scales"] != "equal":
        expected = RQ_STAGES
    else:
        expected = {"train_prior", "evaluate"} if params["prior"]["kind"] != "rq_transformer" else set()
    assert ran_stages(first.stdout) == (expected | {"check_params"} if expected else set()), first.stdout
    for kind in ("rq_transformer", "next_scale"):
        if kind == "next_scale":
            second = dvc("exp", "run", "-S", "rqvae.scales=equal", "-S", "prior.kind=next_scale", cwd=toy)
            assert ran_stages(second.stdout) == {"check_params", "train_prior", "evaluate"}, second.stdout
        prior = json.loads((toy / "metrics/prior.json").read_text())
        gen = json.loads((toy / "metrics/evaluate.json").read_text())["gen"]["rq_prior"]
        assert prior["kind"] == kind and "ci95" in gen and 0 <= gen["style_acc"] <= 1
        out = tmp_path / f"{kind}.png"
        result = CliRunner().invoke(app, ["sample", "--style", "cubism", "--genre", "portrait", "-n", "2", "--out", str(out),
                                          "--prior", str(toy / "models/prior"), "--rqvae", str(toy / "models/rqvae"),
                                          "--refiner", str(toy / "models/refiner"), "--params", str(toy / "params.yaml")])
        assert result.exit_code == 0 and Image.open(out).mode == "RGB", result.output


def test_plots_show_renders_with_images(toy, tmp_path):
    dvc("plots", "show", "-o", str(tmp_path / "plots"), cwd=toy)
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "progressive.png" in html and "sd_samples.png" in html
    assert list((tmp_path / "plots").rglob("*.png")), "image plots are copied next to the page"


def test_cli_tools_work_on_the_pipeline_outputs(toy, tmp_path):
    check_cli_tools(toy, tmp_path)


def check_cli_tools(repo: Path, out: Path) -> None:
    """`generate` (base + LoRA, and compressed), `reconstruct` and `inspect` on real outputs."""
    from PIL import Image
    from typer.testing import CliRunner

    from squeezegen.cli import app

    cli = CliRunner()
    params = ["--params", str(repo / "params.yaml")]
    result = cli.invoke(app, ["inspect", str(repo / "models/quantized/unet.gguf")])
    assert result.exit_code == 0 and "Q4_K" in result.output and "bits/weight" in result.output, result.output

    result = cli.invoke(app, ["generate", "a cubist portrait painting", "--base", str(repo / "models/base"),
                              "--lora", str(repo / "models/lora"), "--out", str(out / "lora.png"), *params])
    assert result.exit_code == 0, result.output
    result = cli.invoke(app, ["generate", "a cubist portrait painting", "--compressed", "--base",
                              str(repo / "models/base"), "--quantized", str(repo / "models/quantized"),
                              "--out", str(out / "compressed.png"), *params])
    assert result.exit_code == 0 and "peak memory" in result.output, result.output
    assert Image.open(out / "lora.png").size == Image.open(out / "compressed.png").size

    source = out / "source.png"
    Image.new("RGB", (80, 80), (200, 40, 40)).save(source)
    for extra in ([], ["--refine"]):
        result = cli.invoke(app, ["reconstruct", str(source), "--levels", "1", "--out", str(out / "rec.png"),
                                  "--rqvae", str(repo / "models/rqvae"), "--refiner", str(repo / "models/refiner"), *extra])
        assert result.exit_code == 0, result.output
        assert Image.open(out / "rec.png").mode == "RGB"
    result = cli.invoke(app, ["reconstruct", str(source), "--levels", "99", "--rqvae", str(repo / "models/rqvae")])
    assert result.exit_code == 2 and "levels" in result.output
