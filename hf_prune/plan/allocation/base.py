"""What every target receives and returns, and what a target is.

A target decides *how many* groups each scope keeps, for the budget; which ones is the importance's job, unless
the target chooses them itself (Hyperflux's gates, the search's measured widths). Every target takes one
:class:`AllocationRequest` and returns one :class:`Allocation`: the one-shot rules (uniform, EMP) read only the
scores and the budget, the planners (search, Hyperflux) also the model and the calibration rows it carries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...adapters import PrunableScope
from ...calibration.statistics import CalibrationStatistics
from ...config import PruningConfig
from ...errors import BudgetError


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
    #: what the planners read besides the budget: the model (unchanged by planning), the config, the calibration
    #: rows the scores came from and the rows held out of them (the search measures its costs there)
    model: nn.Module | None = None
    config: PruningConfig | None = None
    rows: torch.Tensor | None = None
    held_out_rows: torch.Tensor | None = None

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
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the chosen beta, for the report
    #: which groups each scope keeps, when the target chose them itself (else the top scores)
    groups: dict[str, list[int]] | None = None
    #: one entry per step of a learned target (Hyperflux's ticks), plotted beside the checkpoint
    trajectory: list[dict[str, Any]] = field(default_factory=list)


def _no_lines(report: Any) -> list[str]:
    return []


def _always(config: PruningConfig) -> bool:
    return True


@dataclass(frozen=True)
class Target:
    """A registered target (:data:`hf_prune.registry.TARGETS`): its rule and what the run must know of it."""

    #: the rule: the budget problem in, the counts (and maybe the groups) out
    allocate: Callable[[AllocationRequest], Allocation]
    #: lines the summary and the model card print about the target's own figures (``report.allocation``)
    describe: Callable[[Any], list[str]] = _no_lines
    #: whether the groups are ranked by importance scores for this config (they are computed only then)
    reads_scores: Callable[[PruningConfig], bool] = _always
    #: whether the rule itself reads calibration rows (besides any the scores need)
    reads_rows: bool = False
    #: whether the rule measures candidates with the cut's compensation applied, so it reads the compensation's
    #: statistics of the dense model before the cut (second moments for least squares) even when the cut itself
    #: refits on the pruned model's activations
    compensates_candidates: bool = False


def as_target(value: Target | Callable[[AllocationRequest], Allocation]) -> Target:
    """A registered target: a :class:`Target`, or a bare rule ``(request) -> Allocation`` (what a plug-in registers)."""
    return value if isinstance(value, Target) else Target(value)
