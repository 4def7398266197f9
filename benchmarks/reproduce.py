"""Reproduction check: a clean clone of HEAD, `dvc repro`, every output and figure against the commit's.

The committed `dvc.lock` and `metrics/` are the reference.

    python benchmarks/reproduce.py [--keep] [--strict | --no-strict] [--rtol 0.05] [--out metrics/reproduce.json]
    python benchmarks/reproduce.py --against DIR [--reference DIR]   # compare a finished project folder, run nothing

Compared, stage by stage:
- every DVC output's md5 in the new `dvc.lock` against the committed one;
- every metric outside `perf` in every metrics file of `dvc.yaml`, key by key (the metrics files'
  md5s always differ: their `perf` figures are timings).
Outputs that carry timings always differ and are left out, named in the result: `reports/benchmark`
(its table and frontier plot), `reports/report.md` (its tables) and `metrics/benchmark_memory.csv`
(a CPU process's peak RSS); `metrics/determinism.json` records the same list.

Strict mode (the committed `repro.strict`, or `SQUEEZEGEN_STRICT=1`, or `--strict`) promises the
same bytes on any x86-64 CPU: every output md5 and every figure must be equal. Otherwise, across
machines trained models differ at float level and the figures move with them; the check then
fails when a figure moves more than it may:
- exactly equal: data figures (`metrics/data.json`), counts and byte sizes (integers), flags and
  names;
- a generation figure `gen.<generator>.<figure>`: within the committed 95% interval
  (`gen.<generator>.ci95.<figure>`); the interval bounds themselves are reported, not judged;
- every other figure: within `--rtol` (relative) of the committed value.
Writes what differs and by how much to `--out` (git-ignored: it describes one machine's run),
prints a short table, and exits with status 1 when the check fails.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from squeezegen import strict  # noqa: E402
from squeezegen.dvc_outputs import declared_metrics as metric_files  # noqa: E402
from squeezegen.files import atomic_write_json  # noqa: E402
from squeezegen.metrics_files import PERF  # noqa: E402

# Outside strict mode every figure measured on a trained model may move across CPUs. 5% is a
# judgment, not yet a measurement: wider than a few of the toy's 134 val images changing their
# verdict (0.75% each), narrower than the gaps its conclusions rest on. A default-mode run on
# another machine lists every relative change, to calibrate it.
DEFAULT_RTOL = 0.05
# Outputs whose bytes carry timings or a process's RSS: they differ between any two runs.
TIMING_OUTPUTS = {
    "reports/benchmark": "benchmark's table and frontier plot print seconds per image",
    "reports/report.md": "its tables print seconds per image and peak RSS",
    "metrics/benchmark_memory.csv": "peak memory on a CPU is the process's RSS",
}
DATA_METRICS = ("metrics/data.json",)  # data figures: no float kernel in between, exact in every mode
COMMITTED = ("dvc.yaml", "dvc.lock", "params.yaml")


# ----------------------------------------------------------------------------- reading a project


def lock_outs(project: Path) -> dict[str, dict[str, str]]:
    """{stage: {out path: md5}} from the project's `dvc.lock`."""
    path = project / "dvc.lock"
    if not path.is_file():
        raise SystemExit(f"error: {path}: no dvc.lock; run `dvc repro` there first")
    lock = yaml.safe_load(path.read_text()).get("stages", {})
    return {stage: {out["path"]: out.get("md5", "") for out in entry.get("outs", [])} for stage, entry in lock.items()}


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of a metrics dict as (dotted key, value), list items by index, types kept."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}{key}.")
    elif isinstance(node, list) and node:
        for i, value in enumerate(node):
            yield from leaves(value, f"{prefix}{i}.")
    else:
        yield prefix[:-1], node


def quality_figures(path: Path) -> dict[str, Any]:
    """A metrics file's figures outside `perf`, flattened."""
    data = json.loads(path.read_text())
    return dict(leaves({k: v for k, v in data.items() if k != PERF}))


# ---------------------------------------------------------------------------------- judging


@dataclass(frozen=True)
class Verdict:
    rule: str  # exact | interval | rtol | bound
    fails: bool
    note: str = ""


def _equal(a: Any, b: Any) -> bool:
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return both_nan or (a == b and type(a) is type(b))


def _interval(figures: dict[str, Any], key: str) -> tuple[float, float] | None:
    """The committed 95% interval of a generation figure `gen.<g>.<figure>`, if it has one."""
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != "gen":
        return None
    lo, hi = (figures.get(f"gen.{parts[1]}.ci95.{parts[2]}.{end}") for end in ("lo", "hi"))
    return (lo, hi) if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) else None


def judge(file: str, key: str, committed: Any, reproduced: Any, figures: dict[str, Any], *,
          strict_mode: bool, rtol: float) -> Verdict:
    """Whether a figure that differs from its committed value fails the check, and by which rule."""
    if strict_mode:
        return Verdict("exact", True, "strict mode: every figure must be equal")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (committed, reproduced))
    if file in DATA_METRICS or not numbers or isinstance(committed, int) and isinstance(reproduced, int):
        return Verdict("exact", True, "data figure, count, size, flag or name")
    if ".ci95." in key:
        return Verdict("bound", False, "an interval bound moves with its figure")
    if (interval := _interval(figures, key)) is not None:
        lo, hi = interval
        return Verdict("interval", not lo <= reproduced <= hi, f"committed 95% interval [{lo:.4g}, {hi:.4g}]")
    close = math.isclose(committed, reproduced, rel_tol=rtol, abs_tol=1e-12)
    return Verdict("rtol", not close, f"relative tolerance {rtol:g}")


def _relative(committed: Any, reproduced: Any) -> float | None:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (committed, reproduced)):
        return None
    scale = max(abs(committed), abs(reproduced))
    return None if scale == 0 or math.isnan(scale) or math.isinf(scale) else (reproduced - committed) / scale


def compare(reference: Path, candidate: Path, *, strict_mode: bool, rtol: float = DEFAULT_RTOL) -> dict:
    """Every output md5 and every figure of `candidate` against `reference` (the committed project)."""
    ref_outs, new_outs = lock_outs(reference), lock_outs(candidate)
    files = metric_files(reference)
    excluded = {**TIMING_OUTPUTS, **{f: "compared figure by figure below (its perf figures are timings)" for f in files}}
    outputs = {"compared": 0, "identical": 0, "differing": [], "missing": [], "excluded": excluded}
    for stage, outs in ref_outs.items():
        for path, md5 in outs.items():
            if path in excluded:
                continue
            outputs["compared"] += 1
            new = new_outs.get(stage, {}).get(path)
            if new is None:
                outputs["missing"].append({"stage": stage, "path": path, "fails": True})
            elif new == md5:
                outputs["identical"] += 1
            else:
                outputs["differing"].append({"stage": stage, "path": path, "committed": md5, "reproduced": new,
                                             "fails": strict_mode})
    metrics = {"compared": 0, "identical": 0, "differing": [], "missing": [], "excluded": f"every `{PERF}` figure"}
    for file in files:
        if not (candidate / file).is_file():
            metrics["missing"].append({"file": file, "key": None, "fails": True})
            continue
        ref_figs, new_figs = quality_figures(reference / file), quality_figures(candidate / file)
        for key in sorted(set(ref_figs) | set(new_figs)):
            metrics["compared"] += 1
            if key not in ref_figs or key not in new_figs:
                side = "reproduced" if key not in new_figs else "committed"
                metrics["missing"].append({"file": file, "key": key, "missing_from": side, "fails": True})
                continue
            committed, reproduced = ref_figs[key], new_figs[key]
            if _equal(committed, reproduced):
                metrics["identical"] += 1
                continue
            verdict = judge(file, key, committed, reproduced, ref_figs, strict_mode=strict_mode, rtol=rtol)
            metrics["differing"].append({"file": file, "key": key, "committed": committed, "reproduced": reproduced,
                                         "relative_change": _relative(committed, reproduced), "rule": verdict.rule,
                                         "note": verdict.note, "fails": verdict.fails})
    failures = sum(item["fails"] for group in (outputs, metrics) for kind in ("differing", "missing") for item in group[kind])
    return {"mode": "strict" if strict_mode else "default", "rtol": None if strict_mode else rtol,
            "passed": failures == 0, "failures": failures, "outputs": outputs, "metrics": metrics}


# ------------------------------------------------------------------------------------ running


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def clean_clone(dest: Path, commit: str) -> Path:
    """`git clone` of the repository at `commit` (HEAD's commit, not the working tree)."""
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(ROOT), str(dest)], check=True, capture_output=True)
    subprocess.run(["git", "checkout", "-q", commit], cwd=dest, check=True, capture_output=True)
    return dest


def snapshot_committed(clone: Path, dest: Path) -> Path:
    """The committed dvc.lock, dvc.yaml, params and metrics, kept aside before `dvc repro` rewrites them."""
    for rel in [*COMMITTED, *metric_files(clone)]:
        if (clone / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(clone / rel, dest / rel)
    return dest


def run_repro(clone: Path, *, force_strict: bool) -> float:
    """`dvc repro --force` in the clone with this venv, its own code and an MLflow store of its own."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DVC_NO_ANALYTICS="1", TQDM_MININTERVAL="30")
    for name in ("MLFLOW_TRACKING_URI", "SQUEEZEGEN_PIPELINE_RUN"):
        env.pop(name, None)
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(clone / "src")  # the clone's code, not the editable install's
    if force_strict:
        env[strict.ENV] = "1"
    started = time.perf_counter()
    with open(clone / "repro.log", "w") as log:
        proc = subprocess.Popen([str(bin_dir / "dvc"), "repro", "--force"], cwd=clone, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in proc.stdout:
            log.write(line)
            if line.startswith(("Running stage", "strict mode")):
                print(f"  [{time.perf_counter() - started:6.0f} s] {line.rstrip()}", flush=True)
    if proc.wait() != 0:
        raise SystemExit(f"error: dvc repro failed in {clone}:\n{(clone / 'repro.log').read_text()[-6000:]}")
    return time.perf_counter() - started


# ----------------------------------------------------------------------------------- printing


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def print_table(result: dict, out: Path, limit: int = 30) -> None:
    o, m = result["outputs"], result["metrics"]
    print(f"reproduction check ({result['mode']} mode): {'PASSED' if result['passed'] else 'FAILED'}, "
          f"{result['failures']} failure(s)\n"
          f"  outputs: {o['compared']} compared, {o['identical']} identical, {len(o['differing'])} differ, "
          f"{len(o['missing'])} missing; left out: {', '.join(TIMING_OUTPUTS)} (timings)\n"
          f"  metrics: {m['compared']} figures outside perf compared, {m['identical']} identical, "
          f"{len(m['differing'])} differ, {len(m['missing'])} missing")
    rows = []
    for item in o["missing"]:
        rows.append((True, f"output  {item['stage']}: {item['path']}", "missing from the reproduced dvc.lock"))
    for item in o["differing"]:
        rows.append((item["fails"], f"output  {item['stage']}: {item['path']}",
                     f"md5 {item['committed'][:10]} → {item['reproduced'][:10]}"))
    for item in m["missing"]:
        where = f"{item['file']}: {item['key']}" if item["key"] else item["file"]
        rows.append((True, f"metric  {where}", f"missing from the {item.get('missing_from', 'reproduced')} figures"))
    for item in m["differing"]:
        change = "" if item["relative_change"] is None else f" ({item['relative_change']:+.2%})"
        rows.append((item["fails"], f"metric  {item['file']}: {item['key']}",
                     f"{_fmt(item['committed'])} → {_fmt(item['reproduced'])}{change}  [{item['rule']}: {item['note']}]"))
    rows.sort(key=lambda row: not row[0])  # failures first
    for fails, what, how in rows[:limit]:
        print(f"  {'FAIL' if fails else 'ok  '}  {what}  {how}")
    if len(rows) > limit:
        print(f"  … {len(rows) - limit} more in {out}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, help="a finished project folder to compare (nothing is run)")
    parser.add_argument("--reference", type=Path, default=ROOT,
                        help="with --against: the project holding the committed dvc.lock and metrics (default: this one)")
    mode = parser.add_mutually_exclusive_group()  # neither: the committed repro.strict, or SQUEEZEGEN_STRICT=1
    mode.add_argument("--strict", dest="strict", action="store_const", const=True, default=None,
                      help="run in strict mode and compare exactly")
    mode.add_argument("--no-strict", dest="strict", action="store_const", const=False,
                      help="compare with the default-mode rules (interval, tolerance)")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help="relative tolerance outside strict mode")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    parser.add_argument("--out", type=Path, default=ROOT / "metrics/reproduce.json", help="where to write the result")
    args = parser.parse_args(argv)

    perf: dict[str, Any] = {}
    if args.against is not None:
        reference, candidate = args.reference.resolve(), args.against.resolve()
        strict_mode = args.strict if args.strict is not None else strict.requested(reference / "params.yaml")
        source = {"reference": str(reference), "candidate": str(candidate)}
        result = compare(reference, candidate, strict_mode=strict_mode, rtol=args.rtol)
    else:
        commit = _git("rev-parse", "HEAD", cwd=ROOT)
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no", cwd=ROOT))
        if dirty:
            print(f"note: the working tree has uncommitted changes; the check runs the commit {commit[:10]} only")
        scratch = Path(tempfile.mkdtemp(prefix="squeezegen-reproduce-"))
        try:
            clone = clean_clone(scratch / "clone", commit)
            committed = snapshot_committed(clone, scratch / "committed")
            strict_mode = args.strict if args.strict is not None else strict.requested(committed / "params.yaml")
            print(f"dvc repro of {commit[:10]} in {clone} ({'strict' if strict_mode else 'default'} mode) …", flush=True)
            perf["repro_seconds"] = round(run_repro(clone, force_strict=bool(args.strict)), 1)
            result = compare(committed, clone, strict_mode=strict_mode, rtol=args.rtol)
        finally:
            if args.keep:
                print(f"kept {scratch}")
            else:
                shutil.rmtree(scratch, ignore_errors=True)
        source = {"git_commit": commit, "working_tree_dirty": dirty}
    result = {**source, **result, PERF: perf}
    atomic_write_json(args.out, result)
    print_table(result, args.out)
    print(f"→ {args.out}")
    return result


if __name__ == "__main__":
    from squeezegen.errors import UserError

    try:
        sys.exit(0 if main()["passed"] else 1)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
