"""Pick one option per scope: least total cost, at least a given number of parameters removed.

This is the multiple-choice knapsack problem. It is solved exactly by dynamic programming over the
removed parameters, counted in bins of ``target / resolution`` with every option's removal rounded
*down* to whole bins, so a solution the program accepts removes at least the target in real
parameters. Rounding can make it remove up to one bin per scope more than needed; the planner gives
that surplus back afterwards, one group at a time, where it costs least.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...errors import BudgetError


@dataclass(frozen=True)
class Option:
    """One way to cut one scope: keep ``kept`` groups, which removes ``removed`` parameters at ``cost``."""

    kept: int
    removed: int
    cost: float


def solve(options: Sequence[Sequence[Option]], target_removed: int, resolution: int = 4096) -> list[int]:
    """Index of the chosen option of every scope: minimal total cost with total removal >= ``target_removed``.

    Exact for the binned removals (``resolution`` bins span the target; the state "target reached"
    absorbs any larger removal). Raises :class:`BudgetError` when even the largest option of every
    scope removes too little.
    """
    most = sum(max(option.removed for option in choices) for choices in options)
    if most < target_removed:
        raise BudgetError(f"the candidates remove at most {most:,} parameters, fewer than the {target_removed:,} asked")
    if target_removed <= 0:
        return [min(range(len(choices)), key=lambda i: (choices[i].cost, -choices[i].kept)) for choices in options]
    unit = target_removed / resolution
    bins = resolution
    best = torch.full((bins + 1,), math.inf, dtype=torch.float64)
    best[0] = 0.0
    chosen = torch.zeros(len(options), bins + 1, dtype=torch.long)  # option that reached each state
    origin = torch.zeros(len(options), bins + 1, dtype=torch.long)  # state it came from
    states = torch.arange(bins + 1)
    for index, choices in enumerate(options):
        new_best = torch.full((bins + 1,), math.inf, dtype=torch.float64)
        new_chosen = torch.zeros(bins + 1, dtype=torch.long)
        new_origin = torch.zeros(bins + 1, dtype=torch.long)
        for k, option in enumerate(choices):
            step = min(bins, int(option.removed // unit))
            value = torch.full((bins + 1,), math.inf, dtype=torch.float64)
            source = states - step
            value[step:bins] = best[: bins - step] + option.cost
            # every state at or past bins - step reaches the target: take the cheapest of them
            tail = best[bins - step:]
            at = int(torch.argmin(tail))
            value[bins] = tail[at] + option.cost
            source = source.clone()
            source[bins] = bins - step + at
            better = value < new_best
            new_best = torch.where(better, value, new_best)
            new_chosen[better] = k
            new_origin[better] = source[better]
        best, chosen[index], origin[index] = new_best, new_chosen, new_origin
    if math.isinf(best[bins].item()):
        raise BudgetError("no combination of the candidates meets the budget")
    picked = [0] * len(options)
    state = bins
    for index in range(len(options) - 1, -1, -1):
        picked[index] = int(chosen[index, state])
        state = int(origin[index, state])
    return picked
