"""Project learned gates onto exactly the parameter budget.

At the end of training the open gates are close to, not exactly at, the budget. The projection keeps
the highest logit of every scope (a layer never loses its last group), then adds groups in order of
decreasing logit whenever their cost still fits, so the kept parameters are as close to the budget as
whole groups allow without exceeding it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ...adapters import PrunableScope


def project_to_budget(
    scopes: Sequence[PrunableScope],
    logits: Mapping[str, torch.Tensor],
    params_per_group: Mapping[str, int],
    budget: float,
) -> dict[str, list[int]]:
    """Scope name -> kept group indices, Σ kept params <= budget, ≥ 1 group per scope."""
    kept: dict[str, set[int]] = {}
    spent = 0.0
    for scope in scopes:
        best = int(torch.argmax(logits[scope.name]))
        kept[scope.name] = {best}
        spent += params_per_group[scope.name]
    candidates = sorted(
        ((float(value), scope.name, index)
         for scope in scopes for index, value in enumerate(logits[scope.name].tolist())
         if index not in kept[scope.name]),
        key=lambda item: (-item[0], item[1], item[2]),
    )
    for _, name, index in candidates:
        cost = params_per_group[name]
        if spent + cost <= budget + 1e-9:
            kept[name].add(index)
            spent += cost
    return {name: sorted(indices) for name, indices in kept.items()}
