"""EMP — Effective Model Pruning (arXiv 2509.25606), per scope, with a budget.

For the scores s of one scope (one layer's KV groups, or one layer's neurons), the effective number
of groups is the inverse Simpson index N_eff = (Σs)² / Σs² (= N / (1 + CV²)); the paper keeps the top
⌊β·N_eff⌋. Two modes:

- ``beta`` given: the paper's raw rule. Note that N_eff/N is a property of the score distribution
  (≈ 0.64 for |Gaussian|-like scores), so β = 1 is a fixed point (~36% sparsity), not a budget.
- ``sparsity`` given (default): keep EMP's *shape* across scopes and solve β by bisection so that the
  kept parameters meet the budget; then round to whole groups (and to multiples of ``mlp_multiple``
  neurons), giving leftover budget greedily to the scopes with the largest fractional residual.

Everything is float64 (the official code computes N_eff in bf16, which is visibly wrong). At least
one group per scope is always kept.
"""

from __future__ import annotations

import math

import torch

from ...adapters import PrunableScope
from ...errors import BudgetError
from ...report import PruningReport
from .base import Allocation, AllocationRequest, Target


def effective_count(scores: torch.Tensor) -> float:
    """N_eff = (Σs)² / Σs², the inverse Simpson index of the normalised scores; 0 for all-zero scores."""
    s = scores.to(torch.float64)
    denominator = float(s.pow(2).sum())
    return float(s.sum()) ** 2 / denominator if denominator > 0 else 0.0


def _allowed_counts(scope: PrunableScope, multiple: int) -> list[int]:
    """Kept counts a scope may take: any for attention, multiples of ``multiple`` (or all) for the MLP."""
    if scope.kind != "mlp" or multiple <= 1:
        return list(range(1, scope.num_groups + 1))
    counts = list(range(multiple, scope.num_groups + 1, multiple))
    if not counts or counts[-1] != scope.num_groups:
        counts.append(scope.num_groups)
    return counts


def _continuous_kept(request: AllocationRequest, n_eff: dict[str, float], beta: float) -> dict[str, float]:
    return {s.name: min(max(beta * n_eff[s.name], 1.0), s.num_groups) for s in request.scopes}


def _kept_params(request: AllocationRequest, kept: dict[str, float]) -> float:
    return sum(kept[name] * request.params_per_group[name] for name in kept)


def solve_beta(request: AllocationRequest, n_eff: dict[str, float], budget: float, iterations: int = 200) -> float:
    """β such that Σ clamp(β·N_eff, 1, N) · params_per_group = budget (monotone in β: bisection)."""
    low, high = 0.0, 1.0
    while _kept_params(request, _continuous_kept(request, n_eff, high)) < budget:
        high *= 2.0
        if high > 1e12:
            break
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        if _kept_params(request, _continuous_kept(request, n_eff, middle)) < budget:
            low = middle
        else:
            high = middle
    return high


def round_to_budget(request: AllocationRequest, target: dict[str, float], budget: float) -> dict[str, int]:
    """Whole, allowed counts whose parameters do not exceed ``budget``, as close to it as possible.

    Start from the largest allowed count at or below each target, then repeatedly give one more step
    to the scope furthest below its target (largest residual in steps) whose step still fits.
    """
    allowed = {s.name: _allowed_counts(s, request.mlp_multiple) for s in request.scopes}
    position = {}
    for scope in request.scopes:
        options = allowed[scope.name]
        position[scope.name] = max(0, max((i for i, c in enumerate(options) if c <= target[scope.name] + 1e-9), default=0))
    kept = {name: allowed[name][i] for name, i in position.items()}
    spare = budget - _kept_params(request, kept)
    while True:
        best, best_residual = None, -math.inf
        for name, i in position.items():
            options = allowed[name]
            if i + 1 >= len(options):
                continue
            step = options[i + 1] - options[i]
            cost = step * request.params_per_group[name]
            residual = (target[name] - options[i]) / step
            if cost <= spare + 1e-9 and residual > best_residual:
                best, best_residual = name, residual
        if best is None:
            return kept
        position[best] += 1
        new = allowed[best][position[best]]
        spare -= (new - kept[best]) * request.params_per_group[best]
        kept[best] = new


def allocate_emp(request: AllocationRequest) -> Allocation:
    if not request.scopes:
        raise BudgetError("nothing to prune: no scope was selected (check --units)")
    n_eff = {name: effective_count(request.scores[name]) for name in (s.name for s in request.scopes)}
    if request.beta is not None:
        kept = {
            s.name: min(s.num_groups, max(1, math.floor(request.beta * n_eff[s.name]))) for s in request.scopes
        }
        return Allocation(kept, {"beta": request.beta, "beta_solved": False})
    request.check_one_group_per_scope_fits()
    budget = request.kept_budget
    beta = solve_beta(request, n_eff, budget)
    kept = round_to_budget(request, _continuous_kept(request, n_eff, beta), budget)
    return Allocation(kept, {"beta": beta, "beta_solved": True})


def describe_emp(report: PruningReport) -> list[str]:
    """The β of the run: solved for the budget, or given (the paper's raw rule, which sets the sparsity itself)."""
    if report.config["sparsity"] is None:
        return [f"sparsity: achieved {report.achieved_sparsity:.2%} with the raw EMP rule, "
                f"beta = {report.allocation.get('beta')}"]
    if report.allocation.get("beta_solved"):
        return [f"EMP: beta = {report.allocation['beta']:.4f}, solved by bisection for the budget"]
    return []


EMP = Target(allocate_emp, describe=describe_emp)
