"""One MLflow run per stage execution, logging what the stage writes to `metrics/`.

The default store is `sqlite:///<repo root>/mlflow.db` with an absolute path, so runs made in
DVC's temporary experiment folders land in the same database; `MLFLOW_TRACKING_URI` overrides
it (a shared server, say). Artifacts go to `mlruns/` next to the database; a copied or moved
project folder re-points its store there on its next stage run (`follow_moved_store`). Every run is tagged with its stage, profile, git commit, the DVC
experiment name and a `pipeline_run` id shared by all stages one `dvc repro` / `dvc exp run`
executes, so `mlflow ui` can group them; with the versions of the packages that shape results,
the lock file's hash, and (after the stage) the DVC md5 of each of its deps and outs
(`squeezegen.lineage`).

A run ends FINISHED, FAILED (the stage raised) or KILLED (Ctrl-C, or SIGTERM from `dvc queue kill`
or a scheduler; the stage then exits with code 143). A run whose process died without a word
(SIGKILL, the kernel's out-of-memory killer) stays RUNNING in the store; the next run of any
stage on the same machine finds it by its `host` / `pid` tags and marks it FAILED
(`mark_stale_runs`): the killed stage itself may never run again (DVC can restore its outputs
from the run cache instead).

The metrics files themselves (layout, the `perf` split, loss curves) are `squeezegen.metrics_files`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping

from squeezegen.config import STAGE_SECTIONS, Config
from squeezegen.metrics_files import write_metrics_file

EXPERIMENT = "squeezegen"
log = logging.getLogger(__name__)
def repo_root(start: Path | None = None) -> Path:
    """The project root: the nearest folder above `start` holding params.yaml (else cwd).

    Inside `dvc exp run` temporary folders this is the temporary copy; the MLflow store then
    follows DVC's own pointer back to the real repo (see `tracking_uri`).
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    return here


def tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI`, else an absolute sqlite store in the main repository root."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    root = root or repo_root()
    # `dvc exp run --temp/--queue` executes in .dvc/tmp/exps/...; keep one store per repo.
    parts = root.parts
    if ".dvc" in parts:
        root = Path(*parts[: parts.index(".dvc")])
    return f"sqlite:///{root / 'mlflow.db'}"


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested dicts/lists → `{"a.b": 1.0, "c.0": 2.0}`, keeping numbers only (MLflow metrics)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat.update(flatten({str(i): v for i, v in enumerate(value)}, f"{name}."))
        elif isinstance(value, bool):
            flat[name] = float(value)
        elif isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
            flat[name] = float(value)
    return flat


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _proc_start(pid: int) -> str:
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    return "0"


def pipeline_run_id() -> str:
    """An id shared by every stage of one `dvc repro` / `dvc exp run`.

    `SQUEEZEGEN_PIPELINE_RUN` wins; otherwise the nearest ancestor process whose command line
    runs dvc (its pid and start time), so all stages DVC launches in one go share it.
    """
    if explicit := os.environ.get("SQUEEZEGEN_PIPELINE_RUN"):
        return explicit
    pid = os.getpid()
    for _ in range(16):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = Path(f"/proc/{ppid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            break
        if any(os.path.basename(part) == b"dvc" for part in cmdline[:3]) or cmdline[1:3] == [b"-m", b"dvc"]:
            key = f"{ppid}-{_proc_start(ppid)}"
            return hashlib.sha1(key.encode()).hexdigest()[:12]
        if ppid <= 1:
            break
        pid = ppid
    return hashlib.sha1(f"{os.getpid()}-{time.time_ns()}".encode()).hexdigest()[:12]


@dataclass
class StageRun:
    """Handle for the active stage: metrics file + MLflow logging from one dict."""

    stage: str
    cfg: Config
    root: Path
    run_id: str | None = None
    _mlflow: Any = field(default=None, repr=False)

    def write_metrics(self, name: str, metrics: Mapping[str, Any], *, machine_dependent: Collection[str] = ()) -> Path:
        """Write `metrics/<name>.json` atomically (speed/load figures under `perf`, see
        `split_perf`) and log the same flattened numbers to MLflow."""
        path, metrics = write_metrics_file(self.root, name, metrics, machine_dependent=machine_dependent)
        if self._mlflow is not None:
            flat = flatten(metrics)
            if flat:
                self._mlflow.log_metrics(flat)
            self._mlflow.log_artifact(str(path), artifact_path="metrics")
        return path

    def log_step(self, step: int, values: Mapping[str, Any]) -> None:
        """Log per-step numbers (loss curves) to MLflow."""
        if self._mlflow is not None:
            flat = flatten(values)
            if flat:
                self._mlflow.log_metrics(flat, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file (picture, table, report) to this stage's MLflow run."""
        if self._mlflow is not None and Path(path).exists():
            if Path(path).is_dir():
                self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)
            else:
                self._mlflow.log_artifact(str(path), artifact_path=artifact_path)


class StageTerminated(SystemExit):
    """SIGTERM arrived while a stage ran: unwinds like Ctrl-C so the run is ended KILLED; exit code 143."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into `StageTerminated` for the block (Python's default dies without unwinding,
    leaving the MLflow run RUNNING). Only the main thread may set handlers; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise StageTerminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _process_alive(pid: int, start: str) -> bool:
    """Whether process `pid` still runs and is the one that started at `start` (pids are reused)."""
    return Path(f"/proc/{pid}").exists() and _proc_start(pid) == start


def mark_stale_runs(client: Any, experiment_id: str, stage: str | None = None, *, note: str = "") -> list[str]:
    """End as FAILED every RUNNING run (of `stage`, or of any stage) whose process is gone;
    returns their run ids.

    Only runs made on this host are judged (another machine's processes cannot be seen from
    here), by their `pid` + `pid_start` tags; a RUNNING run without those tags was made by a
    version of squeezegen that did not record its process, so it is stale too.
    """
    stale = []
    which = f"tags.stage = '{stage}' and " if stage else ""
    for found in client.search_runs([experiment_id], filter_string=f"{which}attributes.status = 'RUNNING'", max_results=1000):
        tags = found.data.tags
        if tags.get("host", socket.gethostname()) != socket.gethostname():
            continue
        pid, start = tags.get("pid"), tags.get("pid_start")
        if pid and pid.isdigit() and start and _process_alive(int(pid), start):
            continue
        client.set_tag(found.info.run_id, "ended_by", f"marked FAILED as stale: its process is gone{note}")
        client.set_terminated(found.info.run_id, status="FAILED")
        stale.append(found.info.run_id)
    return stale


def _warn_stale(client: Any, run_ids: list[str]) -> None:
    for run_id in run_ids:
        log.warning("%s: MLflow run %s was left RUNNING by a process that is gone; marked FAILED",
                    client.get_run(run_id).data.tags.get("stage", "?"), run_id)


def end_stale_runs(root: Path | None = None) -> list[str]:
    """`mark_stale_runs` for every stage, outside a stage run (check_params); best effort: [] when
    MLflow is off, the store does not exist yet, or cannot be reached."""
    if os.environ.get("SQUEEZEGEN_MLFLOW", "1") == "0":
        return []
    uri = tracking_uri(root or repo_root())
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return []
    try:
        import mlflow

        logging.getLogger("alembic").setLevel(logging.WARNING)
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            return []
        client = mlflow.tracking.MlflowClient()
        stale = mark_stale_runs(client, experiment.experiment_id)
    except Exception as exc:  # noqa: BLE001 - tidying up must not fail the params check
        log.warning("could not look for stale MLflow runs in %s (%s)", uri, exc)
        return []
    _warn_stale(client, stale)
    return stale


@contextlib.contextmanager
def stage_run(stage: str, cfg: Config, *, root: Path | None = None) -> Iterator[StageRun]:
    """Open one MLflow run for `stage`, tagged and with that stage's params logged.

    The run ends FINISHED, FAILED if the block raises, KILLED on Ctrl-C or SIGTERM (see the
    module doc); stale RUNNING runs of every stage are marked FAILED first.
    Set `SQUEEZEGEN_MLFLOW=0` to skip MLflow entirely (metrics files are still written).
    """
    root = root or repo_root()
    if os.environ.get("SQUEEZEGEN_MLFLOW", "1") == "0":
        yield StageRun(stage, cfg, root)
        return
    import mlflow  # imported here: it is slow to import and only stages need it

    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    # artifacts next to a sqlite store (absolute), not wherever the stage happens to run
    location = (db.parent / "mlruns").as_uri() if db is not None else None
    if (existing := mlflow.get_experiment_by_name(EXPERIMENT)) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=location)
    elif location is not None and existing.artifact_location != location and _is_own_layout(existing.artifact_location):
        follow_moved_store(db, existing.experiment_id, existing.artifact_location, location)
    experiment = mlflow.set_experiment(EXPERIMENT)
    from squeezegen.lineage import environment_tags, lineage_tags

    client = mlflow.tracking.MlflowClient()
    _warn_stale(client, mark_stale_runs(client, experiment.experiment_id))
    tags = {
        "stage": stage,
        "profile": cfg.profile,
        "git_commit": _git_commit(root),
        "pipeline_run": pipeline_run_id(),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "pid_start": _proc_start(os.getpid()),
        **environment_tags(root),
    }
    active = mlflow.start_run(run_name=stage, tags=tags)
    status = "FAILED"
    try:
        with _sigterm_unwinds():
            params = {"seed": cfg.seed, "profile": cfg.profile}
            for section, values in cfg.section_dict(*STAGE_SECTIONS.get(stage, ())).items():
                params.update({f"{section}.{k}": v for k, v in _flatten_params(values).items()})
            mlflow.log_params(params)
            yield StageRun(stage, cfg, root, active.info.run_id, mlflow)
            # after the stage: its outs exist, so the run names the exact inputs and outputs
            mlflow.set_tags(lineage_tags(root, stage))
        status = "FINISHED"
    except (KeyboardInterrupt, StageTerminated):
        status = "KILLED"
        raise
    finally:
        if (current := mlflow.active_run()) is not None and current.info.run_id == active.info.run_id:
            mlflow.end_run(status)
        else:  # the block ended or replaced the active run: end ours by id
            client.set_terminated(active.info.run_id, status=status)


def _is_own_layout(location: str) -> bool:
    """A location this module made: `file://…/mlruns` next to a sqlite store (not one set by hand)."""
    return location.startswith("file:") and location.rstrip("/").endswith("/mlruns")


def follow_moved_store(db: Path, experiment_id: str, old: str, new: str) -> None:
    """Re-point the experiment's artifact location, and its runs' artifact URIs, from `old` to `new`.

    A copied or moved project folder brings mlflow.db along, whose locations are absolute: new runs
    would write their artifacts into the original folder's `mlruns/`, and old runs would show the
    original's files (or none). MLflow has no API to change an experiment's artifact location, so
    this updates its two tables directly, only the rows under `old`, in one transaction.
    """
    import sqlite3

    like = old.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con, con:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, int(experiment_id)))
        moved = con.execute(
            "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
            "WHERE experiment_id = ? AND artifact_uri LIKE ? ESCAPE '\\'",
            (new, len(old) + 1, int(experiment_id), like),
        ).rowcount
    log.warning("%s was moved: MLflow artifacts now go to %s (was %s; %d earlier runs re-pointed)", db, new, old, moved)


def _flatten_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flatten_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
