"""What every allocator receives and returns.

An allocator decides only *how many* groups each scope keeps; which ones is the importance's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..adapters import PrunableScope


@dataclass
class AllocationRequest:
    scopes: list[PrunableScope]  # the scopes that may be pruned (already filtered by --units)
    params_per_group: dict[str, int]  # scope name -> parameters one group removes
    total_prunable: int  # attention + MLP parameters of *all* scopes, pruned or not
    sparsity: float | None  # share of total_prunable to remove; None = the allocator's own rule (EMP's raw β)
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # scope name -> float64 scores
    beta: float | None = None
    mlp_multiple: int = 1

    @property
    def kept_budget(self) -> float:
        """Parameters the pruned scopes may keep so that the removal hits the sparsity."""
        unselected = self.total_prunable - sum(s.num_groups * self.params_per_group[s.name] for s in self.scopes)
        return (1.0 - self.sparsity) * self.total_prunable - unselected


@dataclass
class Allocation:
    kept: dict[str, int]  # scope name -> groups kept
    details: dict[str, float] = field(default_factory=dict)  # e.g. the chosen beta, for the report
