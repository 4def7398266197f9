"""What a stage run used and made, as MLflow tags: DVC md5 of each dep and out, package versions.

The md5s are computed with DVC's own hashing (`dvc_data`'s `build`, honouring `.dvcignore`),
so they equal the `md5` fields DVC writes to `dvc.lock` for the same files: a run in `mlflow ui`
names the exact data and models it read and wrote, and `git log -S <md5> -- dvc.lock` finds the
commit whose `dvc checkout` restores them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from importlib import metadata
from pathlib import Path

import yaml

LOCK_FILE = "requirements.lock"
# The packages whose versions shape the numbers a stage produces.
RESULT_PACKAGES = (
    "torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "gguf",
    "vector-quantize-pytorch", "lpips", "numpy",
)


def stage_paths(root: Path, stage: str) -> tuple[list[str], list[str]]:
    """(deps, outs) of `stage` as listed in `dvc.yaml` (outs include metrics and plots files)."""
    path = root / "dvc.yaml"
    spec = yaml.safe_load(path.read_text()) if path.is_file() else {}
    entry = (spec or {}).get("stages", {}).get(stage)
    if entry is None:
        return [], []

    def paths(kind: str) -> list[str]:
        return [item if isinstance(item, str) else next(iter(item)) for item in entry.get(kind, [])]

    return paths("deps"), paths("outs") + paths("metrics") + paths("plots")


def dvc_md5s(root: Path, paths: list[str]) -> dict[str, str]:
    """{path: md5} as DVC computes it (`<md5>.dir` for folders); missing paths are left out."""
    from dvc.ignore import DvcIgnoreFilter
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    ignore = DvcIgnoreFilter(fs, str(root))
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="squeezegen-md5-") as scratch:
        odb = HashFileDB(fs, scratch)  # dry_run: nothing is written to it
        for rel in paths:
            path = root / rel
            if path.exists():
                _, _, obj = build(odb, os.fspath(path), fs, "md5", ignore=ignore, dry_run=True)
                out[rel] = obj.hash_info.value
    return out


def package_versions() -> dict[str, str]:
    """Installed version of each package in `RESULT_PACKAGES` ("absent" if not installed)."""
    versions = {}
    for name in RESULT_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def lock_sha256(root: Path) -> str:
    path = root / LOCK_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"


def environment_tags(root: Path) -> dict[str, str]:
    """`pkg.<name>` version tags and `lock_sha256`: known when a stage starts."""
    tags = {f"pkg.{name}": version for name, version in package_versions().items()}
    tags["lock_sha256"] = lock_sha256(root)
    return tags


def lineage_tags(root: Path, stage: str) -> dict[str, str]:
    """`dvc.dep.<path>` / `dvc.out.<path>` → md5 for every dep and out of `stage`."""
    deps, outs = stage_paths(root, stage)
    tags = {f"dvc.dep.{path}": md5 for path, md5 in dvc_md5s(root, deps).items()}
    tags.update({f"dvc.out.{path}": md5 for path, md5 in dvc_md5s(root, outs).items()})
    return tags
