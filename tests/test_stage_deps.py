"""Every stage's code deps in dvc.yaml equal its import closure, and the lock file matches pyproject.

The closure comes from the source alone (`squeezegen.stagedeps`, ast): a missing dep means a
changed module leaves the stage's outputs stale while `dvc status` calls them up to date.
"""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from squeezegen.stagedeps import check_dvc_yaml, import_closure, suggested_code_deps

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_yaml_code_deps_equal_each_stage_import_closure():
    reports = check_dvc_yaml(ROOT)
    assert not reports, "\n".join(map(str, reports)) + "\n(`python -m squeezegen.stagedeps` prints the lists)"


@pytest.fixture
def copy(tmp_path) -> Path:
    """dvc.yaml and the code, copied so that the tests can break them."""
    for rel in ("src", "stages"):
        shutil.copytree(ROOT / rel, tmp_path / rel, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(ROOT / "requirements.lock", tmp_path / "requirements.lock")
    assert check_dvc_yaml(tmp_path) == []
    return tmp_path


def test_a_removed_dep_is_named_with_its_stage(copy):
    text = (copy / "dvc.yaml").read_text()
    stage_block = text.index("  quantize:")
    line = "      - src/squeezegen/tracking.py\n"
    at = text.index(line, stage_block)
    (copy / "dvc.yaml").write_text(text[:at] + text[at + len(line):])
    reports = check_dvc_yaml(copy)
    assert [(r.stage, r.missing) for r in reports] == [("quantize", ("src/squeezegen/tracking.py",))]
    assert "quantize" in str(reports[0]) and "src/squeezegen/tracking.py" in str(reports[0])


def test_a_new_function_level_import_without_a_dep_fails(copy):
    module = copy / "src/squeezegen/quant/gguf/records.py"  # quantize lists the whole quant package
    module.write_text(module.read_text() + "\n\ndef _late():\n    from squeezegen import stagedeps  # noqa\n")
    reports = {r.stage: r for r in check_dvc_yaml(copy)}
    for stage in ("quantize", "benchmark", "evaluate"):  # every stage that imports quant.report
        assert "src/squeezegen/stagedeps.py" in reports[stage].missing, reports
    assert "fetch_data" not in reports


def test_a_dep_the_stage_does_not_use_is_superfluous(copy):
    text = (copy / "dvc.yaml").read_text()
    anchor = "      - src/squeezegen/stages/fetch_data.py\n"
    (copy / "dvc.yaml").write_text(text.replace(anchor, anchor + "      - src/squeezegen/rq/model.py\n      - src/squeezegen/sd\n"))
    (report,) = check_dvc_yaml(copy)
    assert report.stage == "fetch_data" and not report.missing
    assert report.superfluous[0] == "src/squeezegen/rq/model.py" and report.superfluous[1].startswith("src/squeezegen/sd (uses 0")


def test_closure_follows_relative_dynamic_and_package_imports_but_not_type_checking(tmp_path):
    pkg = tmp_path / "src/squeezegen"
    (pkg / "sub").mkdir(parents=True)
    (tmp_path / "stages").mkdir()
    files = {
        "__init__.py": "",
        "a.py": "from .sub import b\nimport importlib\nimportlib.import_module('squeezegen.c')\n",
        "sub/__init__.py": "",
        "sub/b.py": "from ..d import thing\n",
        "c.py": "",
        "d.py": "thing = 1\n",
        "e.py": "",
        "f.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from squeezegen import e\nelse:\n    from squeezegen import g\n",
        "g.py": "",
        "stages/__init__.py": "",
        "stages/s.py": "def main():\n    from squeezegen import a, f\n",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    (tmp_path / "stages/s.py").write_text("from squeezegen.stages import run_stage_script\nrun_stage_script('s')\n")
    closure = {str(p.relative_to("src/squeezegen")) for p in import_closure(tmp_path, Path("stages/s.py"))}
    assert closure == {"__init__.py", "a.py", "sub/__init__.py", "sub/b.py", "c.py", "d.py", "f.py", "g.py",
                       "stages/__init__.py", "stages/s.py"}
    assert suggested_code_deps(tmp_path, Path("stages/s.py"))[0] == "stages/s.py"


def _lock_pins(text: str) -> dict[str, tuple[str, list[str]]]:
    pins = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        if match := re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", block):
            pins[canonicalize_name(match[1])] = (match[2], re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


def test_lock_file_pins_every_dependency_within_pyproject_ranges_with_hashes():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    pins = _lock_pins((ROOT / "requirements.lock").read_text())
    assert len(pins) > len(direct)  # transitive dependencies are locked too
    for req in direct:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements.lock: run `make lock`"
        version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} is outside {req.specifier}: run `make lock`"
    for name, (version, hashes) in pins.items():
        assert hashes, f"{name}=={version} has no --hash in requirements.lock"


def test_every_stage_depends_on_the_lock_file():
    import yaml

    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, stage in spec["stages"].items():
        assert "requirements.lock" in stage["deps"], name
