"""Which code each DVC stage runs, derived from the source, and a check of `dvc.yaml` against it.

A stage re-runs only when one of its deps changes, so its deps must cover every module it can
import: its stage script, `squeezegen.stages.<stage>` (loaded by name in `run_stage_script`),
and the closure of their `import` / `from … import` statements, function-level imports
included. The closure is computed from the AST alone (nothing is imported, no side effects).
Imports under `if TYPE_CHECKING:` are skipped: they never run. Importing `a.b.c` runs
`a/__init__.py` and `a/b/__init__.py` too, so those are part of the closure.

`dvc.yaml` may list a whole package folder instead of its modules where the stage uses most of
it (at least half of its modules); a listed path the stage does not use is superfluous (it would
re-run the stage for nothing). Every stage also depends on the environment's lock file.

Written by hand: DVC has no import tracing, and `modulefinder` executes nothing but also only
follows top-level code paths it can resolve on `sys.path`, not a source tree by path.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import yaml

PACKAGE = "squeezegen"
SRC = Path("src")
LOCK_FILE = "requirements.lock"


def module_path(root: Path, module: str) -> Path | None:
    """`squeezegen.quant.codecs.q4k` → `src/squeezegen/quant/codecs/q4k.py` (or the package's `__init__.py`)."""
    base = root / SRC / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root / SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` except those only reached under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_names(path: Path, module: str) -> set[str]:
    """Dotted names `path` may import at run time: candidates, resolved by `import_closure`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")
                package = package if is_package else package[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # submodules, if any
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            value = node.args[0].value
            if name == "import_module" and isinstance(value, str):
                names.add(value)
            elif name == "run_stage_script" and isinstance(value, str):
                names.add(f"{PACKAGE}.stages.{value}")  # the convention of stages/<stage>.py
    return names


def import_closure(root: Path, script: Path) -> set[Path]:
    """Every `src/squeezegen` file that running `script` can import (repo-relative paths)."""
    found: set[Path] = set()
    queue: list[tuple[Path, str]] = [(root / script, "__main__")]
    while queue:
        path, module = queue.pop()
        for name in imported_names(path, module):
            parts = name.split(".")
            if parts[0] != PACKAGE:
                continue
            for depth in range(1, len(parts) + 1):  # a.b.c runs a/__init__ and a/b/__init__
                prefix = ".".join(parts[:depth])
                target = module_path(root, prefix)
                if target is not None and target not in found:
                    found.add(target)
                    queue.append((target, _module_name(root, target)))
    return {path.relative_to(root) for path in found}


@dataclass(frozen=True)
class StageDepsReport:
    stage: str
    missing: tuple[str, ...]  # code the stage imports that no dep covers
    superfluous: tuple[str, ...]  # code deps the stage does not use (or a package it barely uses)

    def __str__(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"missing deps {list(self.missing)}")
        if self.superfluous:
            parts.append(f"superfluous deps {list(self.superfluous)}")
        return f"stage {self.stage!r} in dvc.yaml: " + "; ".join(parts)


def _stage_script(cmd: str) -> Path | None:
    for token in cmd.split():
        if token.endswith(".py"):
            return Path(token)
    return None


def check_stage(root: Path, name: str, spec: dict) -> StageDepsReport:
    """Compare one stage's code deps with what its script imports."""
    deps = [entry if isinstance(entry, str) else next(iter(entry)) for entry in spec.get("deps", [])]
    script = _stage_script(spec["cmd"])
    needed = {script, Path(LOCK_FILE)} if script else {Path(LOCK_FILE)}
    if script is not None:
        needed |= import_closure(root, script)
    code_deps = [Path(d) for d in deps if d.startswith(("src/", "stages/")) or d == LOCK_FILE]
    covered: set[Path] = set()
    superfluous = []
    for dep in code_deps:
        if (root / dep).is_dir():
            modules = {p.relative_to(root) for p in (root / dep).rglob("*.py")}
            used = modules & needed
            if len(used) * 2 < len(modules):  # "most of a package", else list the modules
                superfluous.append(f"{dep} (uses {len(used)} of its {len(modules)} modules)")
            covered |= used
        elif dep in needed:
            covered.add(dep)
        else:
            superfluous.append(str(dep))
    missing = sorted(str(p) for p in needed - covered)
    return StageDepsReport(name, tuple(missing), tuple(superfluous))


def check_dvc_yaml(root: Path) -> list[StageDepsReport]:
    """One report per stage whose code deps in `dvc.yaml` differ from its import closure."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    reports = [check_stage(root, name, stage) for name, stage in spec["stages"].items()]
    return [r for r in reports if r.missing or r.superfluous]


def suggested_code_deps(root: Path, script: Path) -> list[str]:
    """The code deps to list for a stage running `script`: its script, the lock file, and its
    closure, with a package folder in place of its modules where the stage imports ≥ 3/4 of them."""
    needed = import_closure(root, script)
    packages = sorted({p.parent for p in needed if p.parent != SRC / PACKAGE}, key=lambda p: len(p.parts))
    listed: list[str] = []
    for package in packages:
        modules = {p.relative_to(root) for p in (root / package).rglob("*.py")}
        if len(modules & needed) * 4 >= len(modules) * 3 and not any(str(package).startswith(f"{done}/") for done in listed):
            listed.append(str(package))
    rest = [str(p) for p in needed if not any(str(p).startswith(f"{folder}/") for folder in listed)]
    return [str(script), *sorted(listed + rest), LOCK_FILE]


if __name__ == "__main__":  # python -m squeezegen.stagedeps: what each stage's code deps should be
    spec = yaml.safe_load(Path("dvc.yaml").read_text())
    for name, stage in spec["stages"].items():
        script = _stage_script(stage["cmd"])
        if script is not None:
            print(f"{name}:\n" + "".join(f"  - {dep}\n" for dep in suggested_code_deps(Path("."), script)))
