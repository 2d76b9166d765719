"""``--target search``: measure what each cut costs, solve for the budget, refine around the solution.

1. **Candidates.** Every selected scope may keep one of a grid of group counts: the MLP in steps of
   ``1 / mlp_levels`` of its neurons, attention every KV-group count — both down to **0, the whole
   sublayer removed**. Which groups a count keeps comes from the importance scores.
2. **Measured cost.** For every (scope, count), the KL divergence of the next-token distribution from
   the dense model's when only that scope is cut, on held-out calibration rows
   (:class:`~hf_prune.plan.search.costs.CostMeter`) — with ``--compensate`` applied to the candidate, so the
   search chooses widths for the model it will actually produce. ``--search-costs local`` measures one probe
   per scope and direction that way and scales the others by the change of their own layer's output
   (:mod:`~hf_prune.plan.search.probes`). ``--sequential``
   measures the same costs in one pass over the layers (:class:`~hf_prune.plan.search.costs.SweepCostMeter`),
   the way a model offloaded by ``device_map`` is searched on one GPU.
3. **Solve.** One count per scope, least total cost, at least the budget removed: an exact
   multiple-choice knapsack (:mod:`~hf_prune.plan.search.knapsack`); the surplus that rounding to the grid
   leaves is given back group by group where it costs least, so the budget is met within one group.
4. **Refine.** Costs interact, so they are measured again *around the current solution* on a grid twice
   as fine, the knapsack is solved on those changes, and the result is kept only if the whole plan's KL
   on the held-out rows went down (coarse to fine, as Týr-the-Pruner, arXiv 2503.09657).

Nothing here knows a module name: scopes, masks and the adapter's ``logits`` are all it uses.
"""

from __future__ import annotations

import heapq
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from ...adapters import PrunableScope, get_adapter
from ...calibration.statistics import CalibrationStatistics
from ...cut.compensation import TemporaryCompensation
from ...errors import BudgetError, ConfigError
from ...registry import COMPENSATIONS
from ...report import PruningReport
from ...runtime.modes import eval_mode
from ...runtime.offload import execution_device
from ..allocation import Allocation, AllocationRequest, Target
from ..importance import top_groups
from ...runtime.saved_state import fingerprint
from .costs import CostMeter, SweepCostMeter
from .journal import JournaledMeter, SearchJournal
from .knapsack import Option, solve

logger = logging.getLogger(__name__)


@dataclass
class ScopeChoices:
    """The counts measured for one scope and what each costs (count -> cost), around some plan."""

    scope: PrunableScope
    params_per_group: int
    costs: dict[int, float]

    def options(self) -> list[Option]:
        return [Option(kept, (self.scope.num_groups - kept) * self.params_per_group, cost)
                for kept, cost in sorted(self.costs.items())]


def coarse_counts(scope: PrunableScope, mlp_levels: int, multiple: int) -> list[int]:
    """The first grid: every KV-group count; MLP widths in steps of 1/mlp_levels (multiples of ``multiple``)."""
    if scope.kind == "attention" or scope.num_groups <= mlp_levels:
        return list(range(scope.num_groups + 1))
    counts = {min(scope.num_groups, multiple * round(scope.num_groups * k / mlp_levels / multiple))
              for k in range(mlp_levels + 1)}
    return sorted(counts | {scope.num_groups})


def finer_counts(scope: PrunableScope, current: int, step: float, multiple: int) -> list[int]:
    """Counts around ``current``: one and two ``step``s either way (attention: one group either way)."""
    if scope.kind == "attention" or step < 1:
        offsets = [-1, 1] if scope.kind == "attention" else [-2, -1, 1, 2]
        candidates = {current + offset for offset in offsets}
    else:
        candidates = {current + multiple * round(offset * step / multiple) for offset in (-2, -1, 1, 2)}
    return sorted(c for c in candidates | {current} if 0 <= c <= scope.num_groups)


def keep_top(scores: torch.Tensor, count: int, device: torch.device) -> torch.Tensor:
    """0/1 mask of the groups the cut keeps at ``count`` (:func:`~hf_prune.plan.importance.top_groups`)."""
    mask = torch.zeros(scores.numel(), device=device)
    mask[top_groups(scores, count)] = 1.0
    return mask


def give_back_surplus(choices: list[ScopeChoices], counts: dict[str, int], surplus: int) -> dict[str, int]:
    """Re-add groups while the removal exceeds the target by at least one group: each time the group whose
    (linearly interpolated) cost saving per parameter is largest, never past the next measured count."""
    counts = dict(counts)
    heap: list[tuple[float, str]] = []
    by_name = {choice.scope.name: choice for choice in choices}

    def push(name: str) -> None:
        choice, kept = by_name[name], counts[name]
        higher = [c for c in choice.costs if c > kept]
        if not higher:
            return
        upper = min(higher)
        lower = max(c for c in choice.costs if c <= kept)
        slope = (choice.costs[lower] - choice.costs[upper]) / (upper - lower)  # cost saved per group re-added
        heapq.heappush(heap, (-slope / choice.params_per_group, name))

    for name in counts:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        if by_name[name].params_per_group > surplus:
            continue
        counts[name] += 1
        surplus -= by_name[name].params_per_group
        push(name)
    return counts


def solve_counts(choices: list[ScopeChoices], target_removed: int) -> dict[str, int]:
    """Knapsack over the measured options, then the rounding surplus given back."""
    picked = solve([choice.options() for choice in choices], target_removed)
    counts, removed = {}, 0
    for choice, index in zip(choices, picked):
        option = choice.options()[index]
        counts[choice.scope.name] = option.kept
        removed += option.removed
    return give_back_surplus(choices, counts, removed - target_removed)


def plan_by_search(request: AllocationRequest) -> Allocation:
    """The rule of ``--target search`` (see the module docstring)."""
    _check(request)
    started = time.perf_counter()
    model, config = request.model, request.config
    with eval_mode(model), _meter(request) as meter:
        search = _Search(request, meter, execution_device(model))
        counts, kl = search.first_solution()
        counts, kl = search.refine(counts, kl, config.search.refine_rounds)
        layer_passes = meter.layer_passes
    kept = {scope.name: top_groups(request.scores[scope.name], counts[scope.name]) for scope in request.scopes}
    trajectory = search.trajectory
    details = {
        "search_kl": kl, "search_seconds": time.perf_counter() - started,
        "held_out_rows": int(request.held_out_rows.shape[0]), "layer_passes": layer_passes,
        "rounds_kept": sum(1 for t in trajectory[1:] if t["accepted"]),
        "removed_sublayers": sorted(name for name, groups in kept.items() if not groups), "rounds": trajectory,
    }
    # the rounds are in the details; a trajectory is Hyperflux's per-tick record
    return Allocation({name: len(groups) for name, groups in kept.items()}, details, groups=kept)


def _check(request: AllocationRequest) -> None:
    if request.held_out_rows is None or not len(request.held_out_rows):
        raise ConfigError("target 'search' needs held-out calibration rows to measure costs on")
    if request.sparsity is None:
        raise ConfigError("target 'search' needs a sparsity")
    if not request.scores:
        raise ConfigError("target 'search' needs importance scores to order the groups within a scope")
    if request.selected_params < round(request.sparsity * request.total_prunable):
        raise BudgetError(f"sparsity {request.sparsity:g} is more than the selected units hold; {request.remedy()}")


def _meter(request: AllocationRequest) -> CostMeter | JournaledMeter:
    """The meter of the costs: one pass over the layers with --sequential, cached layer inputs otherwise; every
    candidate measured compensated when the cut will compensate — from the dense model's statistics, or, in a
    sweep, from statistics it gathers one layer at a time (into a record of its own). With a --state-dir, journaled
    (:mod:`.journal`): an interrupted search resumes with --resume."""
    meter = _bare_meter(request)
    state = request.config.state
    if not state.dir:
        return meter
    return JournaledMeter(meter, SearchJournal(state.dir, _fingerprint(request), resume=state.resume,
                                               restart=state.restart))


def _fingerprint(request: AllocationRequest) -> str:
    """What the search's numbers depend on: its options, the rows, the scores, the scopes and the budget."""
    options = {key: value for key, value in request.config.to_dict().items() if key != "recovery"}
    scores = [request.scores[scope.name].double() for scope in request.scopes]
    rows = [request.rows] if request.rows is not None else []
    return fingerprint(options, request.held_out_rows, [(s.name, s.num_groups) for s in request.scopes],
                       request.sparsity, *rows, *scores)


def _bare_meter(request: AllocationRequest) -> CostMeter:
    model, config = request.model, request.config
    adapter = get_adapter(model)
    sweep = config.calibration.sequential
    compensation = None
    if config.compensate != "none":  # measure every candidate as it will be cut: compensated
        statistics = CalibrationStatistics() if sweep else request.statistics
        compensation = TemporaryCompensation(model, request.scopes, statistics, COMPENSATIONS[config.compensate]())
    if sweep:
        return SweepCostMeter(model, adapter, adapter.scopes(model), request.held_out_rows,
                              config.calibration.batch_size, compensation, calibration_rows=request.rows,
                              probe_rows=config.search.probe_rows)
    return CostMeter(model, adapter, adapter.scopes(model), request.held_out_rows, config.calibration.batch_size,
                     compensation, probe_rows=config.search.probe_rows)


class _Search:
    """The search's rounds around one meter: a first solution on the coarse grid, then finer rounds."""

    def __init__(self, request: AllocationRequest, meter: CostMeter, device: torch.device):
        self.request, self.meter, self.device = request, meter, device
        self.options = request.config.search
        self.multiple = max(1, request.mlp_multiple)
        self.target_removed = round(request.sparsity * request.total_prunable)
        self.trajectory: list[dict[str, Any]] = []

    def mask(self, scope: PrunableScope, count: int) -> torch.Tensor:
        return keep_top(self.request.scores[scope.name], count, self.device)

    def masks(self, counts: dict[str, int]) -> dict[str, torch.Tensor]:
        return {name: self.mask(self.meter.scopes[name], count) for name, count in counts.items()}

    def first_solution(self) -> tuple[dict[str, int], float]:
        request, meter, options = self.request, self.meter, self.options
        meter.set_base({})
        requests = [(scope, count, self.mask(scope, count)) for scope in request.scopes
                    for count in coarse_counts(scope, options.mlp_levels, self.multiple) if count < scope.num_groups]
        # the first table does not depend on the budget: measured once per statistics object, so pruning
        # one scored model at several budgets (make_plan(..., statistics=...)) pays for it once
        cache = request.statistics.derived if request.statistics is not None else {}
        key = ("search-costs", options.costs, options.probe_rows, request.config.importance, request.config.compensate,
               options.mlp_levels, self.multiple, tuple(scope.name for scope in request.scopes),
               hash(request.held_out_rows.cpu().numpy().tobytes()))
        if key not in cache:
            cache[key] = meter.measure(requests, "search: measuring costs", local=options.costs == "local")
        choices = _choices(request, requests, cache[key], base={s.name: s.num_groups for s in request.scopes})
        counts = solve_counts(choices, self.target_removed)
        kl = meter.set_base(self.masks(counts))
        self.trajectory.append({"round": 0, "kl": kl, "candidates": len(requests), "accepted": True})
        logger.info("search: first solution KL %.4f from %d measured candidates", kl, len(requests))
        return counts, kl

    def refine(self, counts: dict[str, int], kl: float, rounds: int) -> tuple[dict[str, int], float]:
        """Re-measure around the solution on a grid twice as fine each round; a round that does not lower the
        held-out KL is discarded and ends the search."""
        request, meter = self.request, self.meter
        step = {s.name: s.num_groups / self.options.mlp_levels for s in request.scopes}
        for round_index in range(1, rounds + 1):
            step = {name: value / 2 for name, value in step.items()}
            requests = [(scope, count, self.mask(scope, count)) for scope in request.scopes
                        for count in finer_counts(scope, counts[scope.name], step[scope.name], self.multiple)
                        if count != counts[scope.name]]
            measured = meter.measure(requests, f"search: refining ({round_index}/{rounds})",
                                     local=self.options.costs == "local")
            candidate = solve_counts(_choices(request, requests, measured, base=counts), self.target_removed)
            new_kl = meter.set_base(self.masks(candidate))
            accepted = new_kl < kl
            self.trajectory.append({"round": round_index, "kl": new_kl, "candidates": len(requests),
                                    "accepted": accepted})
            logger.info("search: round %d KL %.4f (%s)", round_index, new_kl, "kept" if accepted else "rejected")
            if not accepted:
                break
            counts, kl = candidate, new_kl
        return counts, kl


def _choices(request: AllocationRequest, requests, measured: list[float], base: dict[str, int]) -> list[ScopeChoices]:
    """Per scope: the base count at cost 0 plus every measured count at its cost."""
    table = {scope.name: {base[scope.name]: 0.0} for scope in request.scopes}
    for (scope, count, _), cost in zip(requests, measured):
        table[scope.name][count] = cost
    return [ScopeChoices(scope, request.params_per_group[scope.name], table[scope.name]) for scope in request.scopes]


def describe_search(report: PruningReport) -> list[str]:
    a = report.allocation
    kept_rounds = f"{a['rounds_kept']} refinement round(s) kept" if a["rounds"][1:] else "no refinement"
    config = report.config
    refit = ("; the cut then refit each layer on the pruned activations, so the written model's KL differs a little"
             if config.get("compensate", "none") != "none" and config.get("refit_on", "dense") != "dense" else "")
    return [f"search: held-out KL {a['search_kl']:.4f} nats/token on {a['held_out_rows']} held-out rows; "
            f"{len(a['rounds'])} solve(s), {kept_rounds}; {a['search_seconds']:.1f}s{refit}"]


SEARCH = Target(plan_by_search, describe=describe_search, reads_rows=True, compensates_candidates=True)
