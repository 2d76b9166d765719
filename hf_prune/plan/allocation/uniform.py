"""Uniform allocation: remove the same fraction of groups in every pruned scope.

The fraction is chosen so that the removed parameters are the requested share of *all* prunable
parameters (attention + MLP of every decoder layer): when both kinds are pruned it equals the
sparsity; when only the MLP is pruned it is larger, so the budget is still met. Each scope rounds
to whole groups (a KV group is a quarter of a layer's attention when there are four), so the
achieved sparsity differs from the request by that rounding only.
"""

from __future__ import annotations

import math

from ...errors import BudgetError, ConfigError
from .base import Allocation, AllocationRequest, Target


def allocate_uniform(request: AllocationRequest) -> Allocation:
    scopes = request.scopes
    if request.sparsity is None:
        raise ConfigError("target 'uniform' needs a sparsity")
    selected = request.selected_params
    if not scopes or selected == 0:
        raise BudgetError("nothing to prune: no scope was selected (check --units)")
    fraction = request.sparsity * request.total_prunable / selected
    if fraction >= 1.0:
        kinds = ", ".join(sorted({scope.kind for scope in scopes}))
        raise BudgetError(
            f"sparsity {request.sparsity:g} needs {fraction:.0%} of the {kinds} groups to be removed; "
            f"{request.remedy()}"
        )
    kept: dict[str, int] = {}
    for scope in scopes:
        remove = math.floor(fraction * scope.num_groups + 0.5)
        if remove >= scope.num_groups:
            raise BudgetError(
                f"sparsity {request.sparsity:g} would remove all {scope.num_groups} {scope.unit}s of {scope.name}; "
                f"a layer must keep at least one — lower --sparsity"
            )
        kept[scope.name] = scope.num_groups - remove
    return Allocation(kept, {"fraction_removed_per_scope": fraction})


UNIFORM = Target(allocate_uniform)
