"""Stage logic: one module per DVC stage, each with the `main` that its stage script
(`stages/<stage>.py`) and its CLI command (`squeezegen <stage>`) both call."""

from __future__ import annotations

import importlib
import sys


def run_stage_script(stage: str) -> None:
    """Entry point of `stages/<stage>.py`: run the stage; a UserError → one message, exit 2."""
    from squeezegen import strict
    from squeezegen.errors import UserError

    try:
        strict.apply()  # before the stage module imports numpy or torch
        module = importlib.import_module(f"squeezegen.stages.{stage}")
        module.main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
