"""How numbers read in tables, reports and the command line: `—` for a missing figure."""

from __future__ import annotations

import math
from typing import Any, Sequence

MISSING = "—"


def fmt_num(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    """`format(x, spec) + suffix`; None or NaN → `—`."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING
    return f"{format(x, spec)}{suffix}"


def fmt_bytes(n: float | None) -> str:
    """Bytes in binary units: `512 B`, `12.5 KiB`, `340.2 MiB`, `1.60 GiB`; None → `—`."""
    if n is None:
        return MISSING
    for unit, scale, digits in (("GiB", 2**30, 2), ("MiB", 2**20, 1), ("KiB", 2**10, 1)):
        if abs(n) >= scale:
            return f"{n / scale:,.{digits}f} {unit}"
    return f"{int(n)} B"


def fmt_mib(n: float | None, spec: str = ",.1f", suffix: str = "") -> str:
    """Bytes as MiB (2^20) in `spec`, e.g. `1,234.5`; None → `—`."""
    return fmt_num(None if n is None else n / 2**20, spec, suffix)


def fmt_db(x: float | None, *, signed: bool = False) -> str:
    """Decibels with 2 decimals (`24.31 dB`, `+1.20 dB` when signed)."""
    return fmt_num(x, "+.2f" if signed else ".2f", " dB")


def fmt_ratio(x: float | None) -> str:
    """A ratio with 2 decimals and a `×`."""
    return fmt_num(x, ".2f", "×")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are str()-ed."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
