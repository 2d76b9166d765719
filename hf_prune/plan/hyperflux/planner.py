"""``--target hyperflux``: train gates on the calibration rows, project them onto the budget."""

from __future__ import annotations

import logging

from ...errors import ConfigError
from ...report import PruningReport
from ..allocation import Allocation, AllocationRequest, Target
from .trainer import HyperfluxTrainer

logger = logging.getLogger(__name__)


def plan_with_gates(request: AllocationRequest) -> Allocation:
    """Hyperflux: train gates on the calibration rows, project them onto exactly the budget."""
    config, rows = request.config, request.rows
    if rows is None:
        raise ConfigError(f"target {config.target!r} needs calibration token ids")
    request.check_one_group_per_scope_fits()
    budget = request.kept_budget
    trainer = HyperfluxTrainer(request.model, request.scopes, request.params_per_group, budget, rows,
                               config.hyperflux, scores=request.scores or None,
                               batch_size=config.calibration.batch_size, seed=config.seed, state=config.state)
    result = trainer.run()
    target_density = budget / trainer.gates.total_cost
    details = {"final_density_before_projection": result.final_density,
               "target_density": target_density, "gate_seconds": result.seconds,
               "ticks": len(result.trajectory), "calibration_rows": int(rows.shape[0]),
               "processes": result.processes}
    warning = gates_far_from_target(result.final_density, target_density)
    if warning:
        details["warning"] = warning
        logger.warning(warning)
    kept = {name: len(groups) for name, groups in result.plan.items()}
    return Allocation(kept, details, groups=result.plan, trajectory=result.trajectory)


def gates_far_from_target(density: float, target: float) -> str | None:
    """A warning when training ended far from the budget, so the projection, not the gates, made the plan.

    ``density`` and ``target`` are open parameter shares. Within 20% of the share to be removed the
    projection only trims; beyond that it decides most of the plan from gates that did not settle.
    """
    to_remove = 1.0 - target
    closed = (1.0 - density) / to_remove if to_remove > 0 else 1.0
    if closed < 0.8:
        return (f"Hyperflux gates closed only {closed:.0%} of the budget before projection (open share "
                f"{density:.3f}, target {target:.3f}): the plan comes mostly from the projection of barely trained "
                "gates; raise --steps or --gate-lr")
    if closed > 1.2:
        return (f"Hyperflux gates closed {closed:.0%} of the budget before projection (open share {density:.3f}, "
                f"target {target:.3f}): the projection reopened groups the gates had closed; raise --regrowth-steps "
                "or lower --pressure-step")
    return None


def describe_hyperflux(report: PruningReport) -> list[str]:
    a = report.allocation
    lines = [f"Hyperflux: {a['ticks']} ticks in {a['gate_seconds']:.1f}s; open parameter share before projection "
             f"{a['final_density_before_projection']:.4f} vs target {a['target_density']:.4f}; "
             "projected onto exactly the budget"]
    return lines + ([f"WARNING: {a['warning']}"] if a.get("warning") else [])


HYPERFLUX = Target(plan_with_gates, describe=describe_hyperflux, reads_rows=True,
                   reads_scores=lambda config: config.hyperflux.gate_init == "scores")  # gates may start from scores
