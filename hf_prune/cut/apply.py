"""The cut: a :class:`PruningPlan` applied to a model — compensate, slice, relabel — and its report written.

The plan is defined here, by the stage that consumes it, so that planning (:mod:`hf_prune.plan`) may use the
cut's pieces (masks, compensation) without the cut knowing how plans are made. A model too large for memory is
cut one decoder layer at a time through a :class:`LayerSink` (:class:`hf_prune.io.layerwise.LayerByLayer`): the
same code cuts each layer, the sink loads it before and writes it out after.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import PrunableScope, count_parameters, get_adapter, prunable_parameters
from ..calibration.statistics import CalibrationStatistics
from ..config import PruningConfig
from ..registry import COMPENSATIONS
from ..report import LayerSummary, PruningReport
from .compensation import compensate
from .relabel import as_pruned_model
from .surgery import apply_plan

logger = logging.getLogger(__name__)


@dataclass
class PruningPlan:
    """What to keep, decided on one copy of a model and applicable to another of the same shapes (e.g.
    learned on a 4-bit base, applied to the full-precision weights)."""

    kept: dict[str, list[int]]  # scope name -> kept group indices
    details: dict[str, Any]  # allocator / trainer figures for the report (beta, densities, ...)
    scores: dict[str, torch.Tensor]
    trajectory: list[dict[str, Any]]
    uniform_kept: dict[str, int] | None  # uniform allocation at the same budget, for comparison
    statistics: CalibrationStatistics | None  # reused by compensation


class LayerSink(Protocol):
    """Where the layers of a model that is not in memory come from and go to, one at a time."""

    def layer(self, layer: nn.Module) -> AbstractContextManager[None]:
        """Inside: ``layer`` holds its weights. After: its cut tensors are written out and dropped."""

    def write_outside(self, layers: nn.ModuleList) -> None:
        """Write what lies outside the decoder layers (embeddings, final norm, head)."""


@torch.no_grad()
def apply_pruning(model: nn.Module, config: PruningConfig, plan: PruningPlan,
                  layer_by_layer: LayerSink | None = None) -> PruningReport:
    """Compensate (if asked), cut, and relabel ``model`` as its family's pruned class, in place.

    ``layer_by_layer`` (``--layerwise``): the model's weights are offloaded; each decoder layer is loaded, cut
    and written out in turn, and the model is left with the pruned shapes on ``meta``.
    """
    adapter = get_adapter(model)
    scopes_before = adapter.scopes(model)
    params_before = count_parameters(model)
    prunable_before = prunable_parameters(model, scopes_before)
    if layer_by_layer is None:
        _cut(model, config, plan, scopes_before)
    else:
        layers = adapter.decoder_layers(model)
        for index, layer in enumerate(tqdm(layers, desc="cutting layer by layer", unit="layer")):
            with layer_by_layer.layer(layer):
                _cut(model, config, plan, [scope for scope in scopes_before if scope.layer == index])
        layer_by_layer.write_outside(layers)
    scopes_after = adapter.scopes(model)
    stats = plan.statistics
    report = PruningReport(
        config=config.to_dict(),
        layers=_layer_summaries(scopes_before, scopes_after, plan.uniform_kept),
        params_before=params_before,
        params_after=count_parameters(model),
        prunable_before=prunable_before,
        prunable_after=prunable_parameters(model, scopes_after),
        allocation=plan.details,
        calibration_tokens=stats.tokens if stats else 0,
        calibration_seconds=stats.seconds if stats else 0.0,
        calibration_processes=stats.processes if stats else 1,
        plan=plan.kept,
        scores=plan.scores,
        trajectory=plan.trajectory,
        pruned_scopes=[(s.name, s.num_groups) for s in scopes_before if s.name in plan.kept],
        scored=bool(plan.scores),
        base_model=getattr(model, "name_or_path", None) or None,
    )
    as_pruned_model(model, scopes_after, report.to_info())
    logger.info("pruned %s -> %s parameters (%.2f%% of prunable removed)",
                f"{params_before:,}", f"{report.params_after:,}", 100 * report.achieved_sparsity)
    return report


def _cut(model: nn.Module, config: PruningConfig, plan: PruningPlan, scopes: list[PrunableScope]) -> None:
    """Compensate and cut ``scopes`` (all of them, or one layer's) as the plan says."""
    if config.compensate != "none":
        compensate(model, [s for s in scopes if s.name in plan.kept], plan.kept, plan.statistics,
                   COMPENSATIONS[config.compensate]())
    apply_plan(model, scopes, plan.kept, allow_empty=True)  # the plan's target chose any empty scope


def _layer_summaries(
    before: list[PrunableScope], after: list[PrunableScope], uniform: dict[str, int] | None
) -> list[LayerSummary]:
    counts: dict[int, dict[str, int]] = {}
    for label, scopes in (("before", before), ("after", after)):
        for scope in scopes:
            counts.setdefault(scope.layer, {})[f"{scope.kind}_{label}"] = scope.num_groups
    if uniform is not None:
        for scope in before:
            counts[scope.layer][f"{scope.kind}_uniform"] = uniform.get(scope.name, scope.num_groups)
    return [
        # a sublayer removed whole has no scope after the cut: it keeps 0 groups
        LayerSummary(layer, c["attention_before"], c.get("attention_after", 0), c["mlp_before"], c.get("mlp_after", 0),
                     c.get("attention_uniform"), c.get("mlp_uniform"))
        for layer, c in sorted(counts.items())
    ]

