"""``--target hyperflux`` as a planner: train gates on the calibration rows, project them onto the budget."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..allocation import AllocationRequest
from ..errors import ConfigError
from .trainer import HyperfluxTrainer

logger = logging.getLogger(__name__)


def plan_with_gates(
    model: nn.Module, request: AllocationRequest, config: Any, input_ids: torch.Tensor | None,
    held_out_ids: torch.Tensor | None = None,
) -> tuple[dict[str, list[int]], dict[str, Any], list[dict[str, Any]]]:
    """Hyperflux: train gates on the calibration rows, project them onto exactly the budget."""
    if input_ids is None:
        raise ConfigError(f"target {config.target!r} needs calibration token ids")
    request.check_one_group_per_scope_fits()
    budget = request.kept_budget
    trainer = HyperfluxTrainer(model, request.scopes, request.params_per_group, budget, input_ids, config.hyperflux,
                               scores=request.scores or None, batch_size=config.calibration.batch_size,
                               seed=config.seed)
    result = trainer.run()
    target_density = budget / trainer.gates.total_cost
    details = {"final_density_before_projection": result.final_density,
               "target_density": target_density, "gate_seconds": result.seconds,
               "ticks": len(result.trajectory), "calibration_rows": int(input_ids.shape[0]),
               "processes": result.processes}
    warning = gates_far_from_target(result.final_density, target_density)
    if warning:
        details["warning"] = warning
        logger.warning(warning)
    return result.plan, details, result.trajectory


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
