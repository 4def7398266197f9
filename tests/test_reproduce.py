"""The reproduction check (benchmarks/reproduce.py) on small fake projects: it passes on an
unchanged copy, flags a changed output and a moved figure, and judges each figure by its rule
(exact in strict mode; outside it exact data and counts, the committed interval for generation
figures, a relative tolerance for the rest). Nothing is run: `--against` compares folders."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks/reproduce.py"


def _load():
    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


reproduce = _load()

DVC_YAML = {"stages": {
    "preprocess": {"cmd": "python stages/preprocess.py", "outs": ["data/processed"],
                   "metrics": [{"metrics/data.json": {"cache": False}}]},
    "train_rqvae": {"cmd": "python stages/train_rqvae.py", "outs": ["models/rqvae"],
                    "metrics": [{"metrics/rqvae.json": {"cache": False}}]},
    "benchmark": {"cmd": "python stages/benchmark.py", "outs": ["reports/benchmark"],
                  "plots": [{"metrics/benchmark_memory.csv": {"cache": False}}]},
    "evaluate": {"cmd": "python stages/evaluate.py", "outs": ["reports/report.md", "reports/evaluate"],
                 "metrics": [{"metrics/evaluate.json": {"cache": False}}]},
}}
OUTS = {
    "preprocess": {"data/processed": "aa01.dir", "metrics/data.json": "aa02"},
    "train_rqvae": {"models/rqvae": "bb01.dir", "metrics/rqvae.json": "bb02"},
    "benchmark": {"reports/benchmark": "cc01.dir", "metrics/benchmark_memory.csv": "cc02"},
    "evaluate": {"reports/report.md": "dd01", "reports/evaluate": "dd02.dir", "metrics/evaluate.json": "dd03"},
}
METRICS = {
    "metrics/data.json": {"n_train": 1366, "score_mean": 54.72, "perf": {"seconds": 1.3}},
    "metrics/rqvae.json": {"psnr": 21.83, "params": 62755, "perplexity": [197.9, 195.2], "grid": [16, 16],
                           "perf": {"train_seconds": 28.6, "peak_mem_bytes": 1517531136}},
    "metrics/evaluate.json": {"gen": {"rq_prior": {"style_acc": 0.40, "bytes": 3908055, "design": {"prior_kind": "rq_transformer"},
                                                   "ci95": {"style_acc": {"lo": 0.30, "hi": 0.50}}}},
                              "perf": {"gen": {"rq_prior": {"seconds_per_image": 0.056}}}},
}


def _write_project(folder: Path, outs: dict, metrics: dict, *, strict_on: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    lock = {"schema": "2.0", "stages": {stage: {"cmd": DVC_YAML["stages"][stage]["cmd"],
                                                "outs": [{"path": p, "hash": "md5", "md5": m} for p, m in paths.items()]}
                                        for stage, paths in outs.items()}}
    (folder / "dvc.lock").write_text(yaml.safe_dump(lock))
    (folder / "params.yaml").write_text(yaml.safe_dump({"repro": {"strict": strict_on, "threads": 2}}))
    for rel, data in metrics.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(json.dumps(data))
    return folder


@pytest.fixture
def committed(tmp_path) -> Path:
    return _write_project(tmp_path / "committed", OUTS, METRICS)


def _rerun(tmp_path: Path, *, outs: dict | None = None, edit=None) -> Path:
    """A reproduced project: timings and timing-bearing outputs always differ; `outs` / `edit` alter the rest."""
    new_outs = copy.deepcopy(OUTS)
    new_outs["benchmark"] = {"reports/benchmark": "ff01.dir", "metrics/benchmark_memory.csv": "ff02"}
    new_outs["evaluate"]["reports/report.md"] = "ff03"
    for stage, paths in new_outs.items():  # metrics files always differ: their perf figures are timings
        for path in paths:
            if path.endswith(".json"):
                paths[path] = "ee" + paths[path]
    for stage, paths in (outs or {}).items():
        new_outs[stage].update(paths)
    metrics = copy.deepcopy(METRICS)
    metrics["metrics/rqvae.json"]["perf"]["train_seconds"] = 31.0
    metrics["metrics/evaluate.json"]["perf"]["gen"]["rq_prior"]["seconds_per_image"] = 0.07
    if edit:
        edit(metrics)
    return _write_project(tmp_path / "reproduced", new_outs, metrics)


def _compare(committed: Path, reproduced: Path, *, strict_mode: bool) -> dict:
    return reproduce.compare(committed, reproduced, strict_mode=strict_mode)


def _failing(result: dict) -> list[str]:
    outputs = [item["path"] for kind in ("differing", "missing") for item in result["outputs"][kind] if item["fails"]]
    figures = [f"{item['file']}:{item['key']}" for kind in ("differing", "missing") for item in result["metrics"][kind]
               if item["fails"]]
    return outputs + figures


@pytest.mark.parametrize("strict_mode", [True, False])
def test_an_unchanged_rerun_passes_with_timings_and_timing_outputs_left_out(committed, tmp_path, strict_mode):
    result = _compare(committed, _rerun(tmp_path), strict_mode=strict_mode)
    assert result["passed"] and _failing(result) == []
    assert result["outputs"]["compared"] == 3 and result["outputs"]["identical"] == 3  # data, model, evaluate pictures
    assert set(result["outputs"]["excluded"]) == {"reports/benchmark", "reports/report.md", "metrics/benchmark_memory.csv",
                                                  "metrics/data.json", "metrics/rqvae.json", "metrics/evaluate.json"}
    assert result["metrics"]["compared"] == result["metrics"]["identical"] == 13  # no perf figure among them


def test_a_changed_output_fails_in_strict_mode_and_is_reported_outside_it(committed, tmp_path):
    reproduced = _rerun(tmp_path, outs={"train_rqvae": {"models/rqvae": "bb99.dir"}})
    strict_result = _compare(committed, reproduced, strict_mode=True)
    assert not strict_result["passed"] and _failing(strict_result) == ["models/rqvae"]
    (item,) = strict_result["outputs"]["differing"]
    assert (item["stage"], item["committed"], item["reproduced"]) == ("train_rqvae", "bb01.dir", "bb99.dir")
    default_result = _compare(committed, reproduced, strict_mode=False)  # models differ at float level across CPUs
    assert default_result["passed"] and [i["path"] for i in default_result["outputs"]["differing"]] == ["models/rqvae"]


def test_a_moved_figure_fails_strict_mode_and_the_tolerance_when_it_moves_too_far(committed, tmp_path):
    def slightly(m):
        m["metrics/rqvae.json"]["psnr"] = 21.83 * 1.03
        m["metrics/rqvae.json"]["perplexity"][1] = 195.2 * 0.98

    reproduced = _rerun(tmp_path, edit=slightly)
    assert _failing(_compare(committed, reproduced, strict_mode=True)) == ["metrics/rqvae.json:perplexity.1",
                                                                           "metrics/rqvae.json:psnr"]
    result = _compare(committed, reproduced, strict_mode=False)
    assert result["passed"]
    psnr = next(i for i in result["metrics"]["differing"] if i["key"] == "psnr")
    assert psnr["rule"] == "rtol" and psnr["relative_change"] == pytest.approx(0.03 / 1.03)

    shutil.rmtree(tmp_path / "reproduced")
    reproduced = _rerun(tmp_path, edit=lambda m: m["metrics/rqvae.json"].update(psnr=19.0))
    assert _failing(_compare(committed, reproduced, strict_mode=False)) == ["metrics/rqvae.json:psnr"]


@pytest.mark.parametrize("style_acc, lo, fails", [(0.45, 0.30, False), (0.55, 0.30, True), (0.45, 0.41, False)])
def test_a_generation_figure_may_move_within_its_committed_interval(committed, tmp_path, style_acc, lo, fails):
    def move(m):
        gen = m["metrics/evaluate.json"]["gen"]["rq_prior"]
        gen["style_acc"] = style_acc
        gen["ci95"]["style_acc"]["lo"] = lo  # the reproduced bound is reported, never judged

    result = _compare(committed, _rerun(tmp_path, edit=move), strict_mode=False)
    assert _failing(result) == (["metrics/evaluate.json:gen.rq_prior.style_acc"] if fails else [])
    rules = {i["key"]: i["rule"] for i in result["metrics"]["differing"]}
    assert rules["gen.rq_prior.style_acc"] == "interval"
    assert rules.get("gen.rq_prior.ci95.style_acc.lo", "bound") == "bound"


@pytest.mark.parametrize("file, key, value", [
    ("metrics/data.json", "score_mean", 54.7201),  # a data figure: exact in every mode
    ("metrics/rqvae.json", "params", 62756),  # a count
    ("metrics/evaluate.json", "gen", {"rq_prior": {**METRICS["metrics/evaluate.json"]["gen"]["rq_prior"], "bytes": 3908056}}),
])
def test_data_figures_counts_and_sizes_are_exact_outside_strict_mode_too(committed, tmp_path, file, key, value):
    result = _compare(committed, _rerun(tmp_path, edit=lambda m: m[file].update({key: value})), strict_mode=False)
    assert not result["passed"] and len(_failing(result)) == 1 and _failing(result)[0].startswith(file)
    assert result["metrics"]["differing"][0]["rule"] == "exact"


def test_a_missing_stage_or_figure_fails(committed, tmp_path):
    reproduced = _rerun(tmp_path, edit=lambda m: m["metrics/rqvae.json"].pop("psnr"))
    lock = yaml.safe_load((reproduced / "dvc.lock").read_text())
    del lock["stages"]["preprocess"]
    (reproduced / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert sorted(_failing(_compare(committed, reproduced, strict_mode=False))) == ["data/processed", "metrics/rqvae.json:psnr"]


def test_the_script_exits_1_on_failure_writes_the_result_and_takes_the_mode_from_the_params(committed, tmp_path):
    reproduced = _rerun(tmp_path, edit=lambda m: m["metrics/rqvae.json"].update(psnr=21.84))
    out = tmp_path / "reproduce.json"
    cmd = [sys.executable, str(SCRIPT), "--against", str(reproduced), "--reference", str(committed), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "strict mode): FAILED" in proc.stdout and "metrics/rqvae.json: psnr" in proc.stdout
    result = json.loads(out.read_text())
    assert result["mode"] == "strict" and result["failures"] == 1 and result["metrics"]["differing"][0]["reproduced"] == 21.84
    proc = subprocess.run(cmd + ["--no-strict"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(out.read_text())["mode"] == "default"


def test_the_timing_outputs_left_out_are_those_two_clean_runs_differ_in():
    """The list matches the project: declared outputs, and what metrics/determinism.json measured
    differing between two clean runs on one machine (besides the metrics files, whose perf differs)."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    declared = {next(iter(e)) if isinstance(e, dict) else e for stage in spec["stages"].values()
                for kind in ("outs", "plots", "metrics") for e in stage.get(kind, [])}
    assert set(reproduce.TIMING_OUTPUTS) <= declared
    measured = json.loads((ROOT / "metrics/determinism.json").read_text())["differing_outputs"]
    assert set(measured) - set(reproduce.metric_files(ROOT)) == set(reproduce.TIMING_OUTPUTS)
    result = reproduce.compare(ROOT, ROOT, strict_mode=True)  # the committed project against itself
    assert result["passed"] and result["outputs"]["compared"] > 15 and result["metrics"]["compared"] > 500
