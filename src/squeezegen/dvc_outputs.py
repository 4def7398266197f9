"""What DVC recorded of each stage (`dvc.yaml` + `dvc.lock`), read without running DVC: putting
back the metrics files a failed run lost, and finding checkpoints of stages that are up to date.

DVC deletes a stage's outputs before it runs the stage's command and records new ones only when
the command succeeds, so a failed run (an error, Ctrl-C, a kill) leaves the stage's `cache: false`
metrics files deleted, and `dvc checkout` does not restore files it does not cache. The copies of
the last successful run are still at hand under the md5 that `dvc.lock` records: in DVC's cache
(its run cache commits them) and in git. `restore_uncached_outs` copies them back.

`persist: true` on those outputs would also keep them, but DVC then leaves the whole stage out of
its run cache (`dvc.stage.cache._can_hash`), and restoring a stage's outputs from the run cache
instead of re-running it is what makes `dvc exp run` cheap here.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from squeezegen.files import atomic_write_bytes

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = Path("checkpoints")  # checkpoints/<stage>/ of the shared training loop


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser: dvc.lock runs to thousands of lines


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_Loader) if path.is_file() else None  # noqa: S506 - a safe loader
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _stages(root: Path, file: str) -> dict[str, Any]:
    return _read_yaml(root / file).get("stages") or {}


def declared_metrics(root: str | Path) -> list[str]:
    """The metrics files the project's `dvc.yaml` declares, sorted (what `dvc repro` writes)."""
    return sorted(next(iter(e)) if isinstance(e, Mapping) else e
                  for spec in _stages(Path(root), "dvc.yaml").values() for e in spec.get("metrics") or [])


def uncached_outs(spec: Mapping[str, Any]) -> list[str]:
    """The outputs a stage's `dvc.yaml` entry marks `cache: false` (its metrics and plots files)."""
    found = []
    for kind in ("outs", "metrics", "plots"):
        for item in spec.get(kind) or []:
            if isinstance(item, Mapping):
                path, flags = next(iter(item.items()))
                if isinstance(flags, Mapping) and flags.get("cache") is False:
                    found.append(str(path))
    return found


def locked_md5s(entry: Mapping[str, Any], kind: str = "outs") -> dict[str, str]:
    """{path: md5} of the `deps` or `outs` of a stage's `dvc.lock` entry."""
    return {str(e["path"]): str(e["md5"]) for e in entry.get(kind) or [] if "md5" in e}


def _from_dvc_cache(root: Path, md5: str) -> bytes | None:
    from dvc.repo import Repo  # imported here: only a failed stage needs it

    with Repo(str(root)) as repo:
        path = Path(repo.cache.local.oid_to_path(md5))
    return path.read_bytes() if path.is_file() else None


def _from_git(root: Path, rel: str) -> bytes | None:
    proc = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=root, capture_output=True, timeout=30)
    return proc.stdout if proc.returncode == 0 else None


def restore_uncached_outs(root: str | Path, stages: Iterable[str]) -> list[str]:
    """Put back each missing `cache: false` output of `stages` as `dvc.lock` records it (from DVC's
    cache, else from git's HEAD), only where the bytes found have the recorded md5. Returns the
    paths restored; never raises (it runs while a stage is already failing)."""
    root = Path(root)
    restored = []
    try:
        spec = _stages(root, "dvc.yaml")
        missing = [(stage, rel) for stage in stages for rel in uncached_outs(spec.get(stage) or {})
                   if not (root / rel).exists()]
        lock = _stages(root, "dvc.lock") if missing else {}
        for stage, rel in missing:
            md5 = locked_md5s(lock.get(stage) or {}).get(rel)
            if md5 is None:
                continue
            for source in (lambda: _from_dvc_cache(root, md5), lambda: _from_git(root, rel)):
                data = source()
                if data is not None and hashlib.md5(data).hexdigest() == md5:
                    atomic_write_bytes(root / rel, data)
                    restored.append(rel)
                    break
    except Exception as exc:  # noqa: BLE001 - a failing restore must not hide the stage's own error
        log.warning("could not restore metrics files from dvc.lock (%s)", exc)
    return restored


def _param_value(params: Any, dotted: str) -> Any:
    node = params
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return KeyError  # a sentinel no params value equals
        node = node[part]
    return node


def stage_up_to_date(root: str | Path, stage: str) -> bool:
    """Whether `stage`'s deps, params and outs on disk are what `dvc.lock` records (what
    `dvc status` calls up to date), using DVC's own hashing (`squeezegen.lineage.dvc_md5s`)."""
    from squeezegen.lineage import dvc_md5s

    root = Path(root)
    entry = _stages(root, "dvc.lock").get(stage) or {}
    if not entry:
        return False
    for file, values in (entry.get("params") or {}).items():
        current = _read_yaml(root / file)
        if any(_param_value(current, key) != value for key, value in (values or {}).items()):
            return False
    for kind in ("deps", "outs"):
        recorded = locked_md5s(entry, kind)
        if dvc_md5s(root, list(recorded)) != recorded:
            return False
    return True


def clean_stale_checkpoints(root: str | Path) -> list[str]:
    """Delete `checkpoints/<stage>/` of every stage that is up to date: its run finished elsewhere
    (DVC restored its outputs from the run cache), so nothing will resume from it. A checkpoint
    of a stage that is not up to date is kept: the stage's next run resumes from it."""
    root = Path(root)
    folder = root / CHECKPOINTS_DIR
    removed = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_dir() and stage_up_to_date(root, path.name):
            shutil.rmtree(path, ignore_errors=True)
            log.warning("%s: removed %s, a checkpoint of a run whose outputs are already in place (dvc.lock)",
                        path.name, path.relative_to(root))
            removed.append(str(path.relative_to(root)))
    return removed
