"""Pick one type per UNet tensor minimizing the total estimated damage under a byte budget.

A multiple-choice knapsack: each tensor takes exactly one of its candidate types (bytes, damage).
Solved exactly by dynamic programming over the budget counted in units of `unit` bytes, each
type's extra bytes over the tensor's cheapest type rounded *up* to whole units, so the result
never exceeds the budget; the rounding leaves at most (tensors × unit) bytes unused, which a
last pass fills with the best single upgrades that still fit. With `resolution` units the DP is
(tensors × types) vector operations on arrays of that length: a fraction of a second for the
~300 quantizable tensors of SD 1.5. Exact matters: a greedy on each tensor's convex hull can be far
from the optimum when a few tensors of very different sizes compete for the budget.

Written by hand: no library here solves a multiple-choice knapsack, and this fits in a page.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from squeezegen.errors import UserError
from squeezegen.quant.mix.sensitivity import TensorChoices

RESOLUTION = 1 << 16  # budget units of the DP


def _cheapest(c: TensorChoices) -> str:
    return min(c.types, key=lambda t: (c.nbytes[t], c.damage[t]))


def allocate(choices: Mapping[str, TensorChoices], budget_bytes: int | None, *, fixed_bytes: int = 0,
             resolution: int = RESOLUTION) -> dict[str, str]:
    """{tensor: type} with Σ bytes + `fixed_bytes` ≤ `budget_bytes` and the least total damage
    (None: no limit, the least damage everywhere). UserError when even the cheapest type
    everywhere does not fit."""
    names = list(choices)
    if budget_bytes is None:
        return {n: min(c.types, key=lambda t: (c.damage[t], c.nbytes[t])) for n, c in choices.items()}
    base = {n: _cheapest(c) for n, c in choices.items()}
    used = fixed_bytes + sum(choices[n].nbytes[t] for n, t in base.items())
    if used > budget_bytes:
        raise UserError(f"quantize budget of {budget_bytes:,} bytes is below the smallest UNet the candidate types "
                        f"allow ({used:,} bytes, of which {fixed_bytes:,} in tensors kept unquantized); raise "
                        "quantize.budget_bytes / budget_bpw or add a smaller type to quantize.candidate_types.")
    room = budget_bytes - used
    unit = max(1, math.ceil(room / resolution))
    cap = room // unit
    dp = np.zeros(cap + 1)  # dp[c]: least damage of the tensors so far with extra cost ≤ c units
    picks = []
    for n in names:
        c = choices[n]
        new = np.full(cap + 1, np.inf)
        arg = np.zeros(cap + 1, dtype=np.int8)
        for j, t in enumerate(c.types):
            k = math.ceil((c.nbytes[t] - c.nbytes[base[n]]) / unit)
            if k > cap:
                continue
            cand = dp[: cap + 1 - k] + c.damage[t]
            better = cand < new[k:]
            new[k:][better] = cand[better]
            arg[k:][better] = j
        dp = new
        picks.append(arg)
    pick, at = {}, cap
    for n, arg in zip(reversed(names), reversed(picks)):
        c = choices[n]
        t = c.types[arg[at]]
        pick[n] = t
        at -= math.ceil((c.nbytes[t] - c.nbytes[base[n]]) / unit)
    pick = {n: pick[n] for n in names}
    used = fixed_bytes + sum(choices[n].nbytes[t] for n, t in pick.items())

    while True:  # the rounding's slack: the best single upgrade that still fits, until none does
        best = None
        for n, c in choices.items():
            for t in c.types:
                cost, gain = c.nbytes[t] - c.nbytes[pick[n]], c.damage[pick[n]] - c.damage[t]
                if gain > 0 and used + cost <= budget_bytes and (best is None or gain > best[0]):
                    best = (gain, n, t, cost)
        if best is None:
            return pick
        _, n, t, cost = best
        pick[n] = t
        used += cost


def budget_from_config(*, budget_bytes: int | None, budget_bpw: float | None, fixed_bytes: int,
                       allocatable_params: int) -> int | None:
    """The byte budget of all UNet tensor data: `quantize.budget_bytes` as it is, or
    `budget_bpw` bits per weight over the tensors the allocation chooses for, plus the bytes of
    the tensors it cannot change (kept F16, fallback-only), rounded down to whole bytes."""
    if budget_bpw is not None:
        return fixed_bytes + int(budget_bpw * allocatable_params // 8)
    return budget_bytes
