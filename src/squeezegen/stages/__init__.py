"""Stage logic: one module per DVC stage, each with the `main` that its stage script
(`stages/<stage>.py`) and its CLI command (`squeezegen <stage>`) both call."""

from __future__ import annotations

import importlib
import sys


def run_stage_script(stage: str) -> None:
    """Entry point of `stages/<stage>.py`: run the stage; a UserError → one message, exit 2.

    Strict mode (`squeezegen.strict`) is applied before the stage imports numpy or torch. Whatever
    ends the stage early (an error, Ctrl-C, SIGTERM), the metrics files DVC deleted before running
    it are put back as `dvc.lock` records them, so git sees no change."""
    from squeezegen import strict
    from squeezegen.errors import UserError

    try:
        strict.apply()  # before the stage module imports numpy or torch
        module = importlib.import_module(f"squeezegen.stages.{stage}")
        module.main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _restore_metrics(stage)
        sys.exit(2)
    except BaseException:
        _restore_metrics(stage)
        raise


def _restore_metrics(stage: str) -> None:
    from pathlib import Path

    from squeezegen.dvc_outputs import restore_uncached_outs

    for rel in restore_uncached_outs(Path.cwd(), [stage]):
        print(f"{stage}: put back {rel} from the last successful run (as dvc.lock records it)", file=sys.stderr)
