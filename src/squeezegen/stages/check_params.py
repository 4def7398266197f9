"""check_params: validate all of params.yaml before any other stage runs, and tidy up after
interrupted runs.

In: `params.yaml`, the whole file (every other stage tracks only the keys it reads, so a typo'd
key or a bad value in a section no stage re-runs for would otherwise pass silently). Out:
`data/params_checked.json`, a marker every other stage depends on. Its content never changes, so
a params change re-runs this stage (a fraction of a second) and then only the stages whose own
params changed. A bad file fails here, before DVC deletes any other stage's outputs.

While it runs it also tidies up after interrupted runs: it puts back metrics files a failed stage
lost and deletes the checkpoints of stages that are up to date (`dvc_outputs`: their runs were
restored from DVC's run cache), and marks FAILED the MLflow runs whose process is gone.
"""

from __future__ import annotations

from pathlib import Path

from squeezegen.config import PARAMS_FILE, check_params_file, load_config
from squeezegen.dvc_outputs import clean_stale_checkpoints, restore_uncached_outs
from squeezegen.files import atomic_write_json
from squeezegen.tracking import end_stale_runs

MARKER = Path("data/params_checked.json")
MARKER_CONTENT = {"params": "valid"}  # constant: downstream stages re-run only for their own params


def main(params: str = PARAMS_FILE, profile: str | None = None) -> dict:
    profiles = check_params_file(params)
    if profile is not None:
        load_config(params, profile=profile)
    atomic_write_json(MARKER, MARKER_CONTENT)  # first: every other stage depends on it
    root = Path.cwd()
    for rel in restore_uncached_outs(root, _other_stages(root)):
        print(f"check_params: put back {rel} as dvc.lock records it (a failed run had deleted it)")
    clean_stale_checkpoints(root)
    end_stale_runs(root)
    print(f"check_params: {params} is valid (profiles: {', '.join(profiles)})")
    return {}


def _other_stages(root: Path) -> list[str]:
    import yaml

    path = root / "dvc.yaml"
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {}) if path.is_file() else {}
    return [name for name in stages if name != "check_params"]
