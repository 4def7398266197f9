"""Proof of reproducibility: two clean toy runs of the whole DAG give the same numbers and bytes.

    python benchmarks/determinism.py [--out metrics/determinism.json] [--keep]

Copies the project (tracked and untracked-but-not-ignored files, as a clone plus local edits
would hold) into two temporary folders, runs `dvc repro` in each from nothing, one after the
other (or both at once with `--parallel`), then compares:
- every metric outside `perf` in every `metrics/*.json` the DAG writes (expected: no difference),
- every plot CSV under `metrics/` byte for byte,
- every DVC output by the md5 DVC records for it in `dvc.lock` (`data/processed`,
  `models/quantized`, …).
Writes the comparison to `--out` (figures that depend on the machine's speed under `perf`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from squeezegen.dvc_outputs import declared_metrics as metric_files  # noqa: E402
from squeezegen.files import atomic_write_json  # noqa: E402
from squeezegen.metrics_files import PERF  # noqa: E402
from squeezegen.tracking import flatten  # noqa: E402


def project_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=root, capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def clean_copy(dest: Path) -> Path:
    """The project without any DVC output, metrics file or MLflow store: a run from nothing."""
    for rel in project_files(ROOT):
        if rel.startswith("metrics/") or rel == "dvc.lock":
            continue  # what the runs must produce themselves
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    git = ["git", "-c", "user.name=d", "-c", "user.email=d@d"]
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "snapshot"]):
        subprocess.run(git + cmd, cwd=dest, check=True, capture_output=True)
    return dest


def start_repro(repo: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DVC_NO_ANALYTICS="1", TQDM_MININTERVAL="30")
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(repo / "src")  # each run imports its own copy of the code, not the editable install's
    log = open(repo / "repro.log", "w")
    return subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=repo, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def finish_repro(repo: Path, proc: subprocess.Popen, started: float) -> float:
    if proc.wait() != 0:
        raise SystemExit(f"dvc repro failed in {repo}:\n{(repo / 'repro.log').read_text()[-6000:]}")
    return time.perf_counter() - started


def lock_outs(repo: Path) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for entry in lock.values() for out in entry.get("outs", [])}


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def compare(a: Path, b: Path) -> dict:
    differing, perf_differing, compared = [], 0, 0
    for rel in metric_files(a):
        left, right = json.loads((a / rel).read_text()), json.loads((b / rel).read_text())
        for split in (False, True):
            fa = flatten(left.get(PERF, {}) if split else {k: v for k, v in left.items() if k != PERF})
            fb = flatten(right.get(PERF, {}) if split else {k: v for k, v in right.items() if k != PERF})
            for key in sorted(set(fa) | set(fb)):
                same = key in fa and key in fb and _same(fa[key], fb[key])
                if split:
                    perf_differing += not same
                else:
                    compared += 1
                    if not same:
                        differing.append({"file": rel, "key": key, "run_1": fa.get(key), "run_2": fb.get(key)})
    csvs = sorted(p.name for p in (a / "metrics").glob("*.csv"))
    csv_differing = [n for n in csvs if (a / "metrics" / n).read_bytes() != (b / "metrics" / n).read_bytes()]
    outs_a, outs_b = lock_outs(a), lock_outs(b)
    identical = sorted(p for p in outs_a if outs_b.get(p) == outs_a[p])
    return {
        "metric_files": metric_files(a),
        "quality_keys_compared": compared,
        "differing_quality_keys": differing,
        "plot_csvs_compared": csvs,
        "differing_plot_csvs": csv_differing,
        "outputs_compared": len(outs_a),
        "identical_outputs": identical,
        "differing_outputs": sorted(set(outs_a) - set(identical)),
        "perf": {"perf_keys_differing": perf_differing},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "metrics/determinism.json")
    parser.add_argument("--keep", action="store_true", help="keep the two run folders (printed)")
    parser.add_argument("--parallel", action="store_true", help="run the two repros at the same time (half the wall time)")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="squeezegen-determinism-"))
    seconds = []
    try:
        runs = [clean_copy(scratch / f"run_{i}") for i in (1, 2)]
        if args.parallel:
            print(f"runs 1 and 2 at once: dvc repro in {runs[0]} and {runs[1]} …", flush=True)
            started = time.perf_counter()
            procs = [start_repro(repo) for repo in runs]
            seconds = [finish_repro(repo, proc, started) for repo, proc in zip(runs, procs)]
        else:
            for i, repo in enumerate(runs, 1):
                print(f"run {i}: dvc repro in {repo} …", flush=True)
                seconds.append(finish_repro(repo, start_repro(repo), time.perf_counter()))
                print(f"run {i}: {seconds[-1]:.0f} s", flush=True)
        result = compare(*runs)
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip())
    result = {"git_commit": commit, "working_tree_dirty": dirty, **result}
    result["perf"].update({"repro_seconds": [round(s, 1) for s in seconds], "parallel": args.parallel})
    atomic_write_json(args.out, result)
    print(f"{result['quality_keys_compared']} quality metrics compared, {len(result['differing_quality_keys'])} differ; "
          f"{len(result['identical_outputs'])} of {result['outputs_compared']} outputs byte-identical; "
          f"plot CSVs differing: {result['differing_plot_csvs'] or 'none'} → {args.out}")
    for item in result["differing_quality_keys"]:
        print(f"  {item['file']}: {item['key']}: {item['run_1']} vs {item['run_2']}")
    for path in result["differing_outputs"]:
        print(f"  output differs: {path}")
    return result


if __name__ == "__main__":
    main()
