"""What every allocator receives and returns.

An allocator decides only *how many* groups each scope keeps; which ones is the importance's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..adapters import PrunableScope
from ..errors import BudgetError
from ..statistics import CalibrationStatistics


@dataclass
class AllocationRequest:
    scopes: list[PrunableScope]  # the scopes that may be pruned (already filtered by --units)
    params_per_group: dict[str, int]  # scope name -> parameters one group removes
    total_prunable: int  # attention + MLP parameters of *all* scopes, pruned or not
    sparsity: float | None  # share of total_prunable to remove; None = the allocator's own rule (EMP's raw β)
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # scope name -> float64 scores
    beta: float | None = None
    mlp_multiple: int = 1
    statistics: CalibrationStatistics | None = None  # what the scores came from; planners may cache in it

    @property
    def selected_params(self) -> int:
        """Parameters of the scopes that may be pruned."""
        return sum(s.num_groups * self.params_per_group[s.name] for s in self.scopes)

    @property
    def kept_budget(self) -> float:
        """Parameters the pruned scopes may keep so that the removal hits the sparsity."""
        unselected = self.total_prunable - self.selected_params
        return (1.0 - self.sparsity) * self.total_prunable - unselected

    def remedy(self) -> str:
        """What a user can change when the budget does not fit: only the options they have left."""
        if self.selected_params < self.total_prunable:
            return "lower --sparsity or prune more kinds of units (--units all)"
        return "lower --sparsity"

    def check_one_group_per_scope_fits(self) -> None:
        """Every scope keeps at least one group: refuse a budget smaller than that."""
        if self.kept_budget < sum(self.params_per_group[s.name] for s in self.scopes):
            raise BudgetError(
                f"sparsity {self.sparsity:g} would leave less than one group per layer; {self.remedy()}"
            )


@dataclass
class Allocation:
    kept: dict[str, int]  # scope name -> groups kept
    details: dict[str, float] = field(default_factory=dict)  # e.g. the chosen beta, for the report
