"""The cut: a :class:`PruningPlan` applied to a model — compensate, slice, relabel — and its report written.

The plan is defined here, by the stage that consumes it, so that planning (:mod:`hf_prune.plan`) may use the
cut's pieces (masks, compensation) without the cut knowing how plans are made.

The cut visits the decoder layers in order, whatever the model's size: in memory each layer is simply there; a model
too large for memory gives a :class:`LayerSink` (:class:`hf_prune.io.layerwise.LayerByLayer`) that loads each layer
before and writes it out after. With ``--refit-on pruned`` or ``asymmetric`` a :class:`~.walk.LayerWalk`
carries the calibration rows along, so each layer is refit on the activations of the layers already cut.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import PrunableScope, count_parameters, get_adapter, prunable_parameters
from ..calibration.statistics import CalibrationStatistics
from ..config import PruningConfig
from ..errors import ConfigError
from ..registry import COMPENSATIONS
from ..report import LayerSummary, PruningReport
from ..runtime.offload import has_offloaded_weights
from .compensation import Compensation, choose_groups, compensate, compensate_scope
from .relabel import as_pruned_model
from .surgery import apply_plan
from .walk import LayerWalk

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
    statistics: CalibrationStatistics | None  # of the dense model; compensation reads them with --refit-on dense
    #: the calibration rows the statistics came from: with --refit-on pruned the cut walks them through the layers
    rows: torch.Tensor | None = None


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
    layers = adapter.decoder_layers(model)
    started = time.perf_counter()
    walk = _walk(model, layers, config, plan)
    for index, layer in enumerate(tqdm(layers, desc="cutting layer by layer", unit="layer", leave=False)):
        here = [scope for scope in scopes_before if scope.layer == index]
        with layer_by_layer.layer(layer) if layer_by_layer is not None else nullcontext():
            if walk is None:
                _cut(model, config, plan, here)
            else:
                _cut_on_walk(model, plan, here, walk, layer, COMPENSATIONS[config.compensate]())
                if index + 1 < len(layers):
                    walk.advance(layer)
    refit = {} if walk is None else {"tokens": walk.tokens, "layer_passes": walk.layer_passes,
                                     "seconds": time.perf_counter() - started}
    if layer_by_layer is not None:
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
        refit=refit,
    )
    as_pruned_model(model, scopes_after, report.to_info())
    logger.info("pruned %s -> %s parameters (%.2f%% of prunable removed)",
                f"{params_before:,}", f"{report.params_after:,}", 100 * report.achieved_sparsity)
    return report


def refits_on_pruned_inputs(config: PruningConfig) -> bool:
    """Whether the cut compensates from statistics gathered while it walks the layers (not from the dense model's)."""
    return config.compensate != "none" and config.refit_on != "dense"


def _walk(model: nn.Module, layers: nn.ModuleList, config: PruningConfig, plan: PruningPlan) -> LayerWalk | None:
    if not refits_on_pruned_inputs(config):
        return None
    if plan.rows is None:
        raise ConfigError("refitting on the pruned model's activations (--refit-on pruned) needs the calibration rows "
                          "the plan was made from (PruningPlan.rows); give them, or pass --refit-on dense")
    return LayerWalk(model, layers, plan.rows, config.calibration.batch_size,
                     asymmetric=config.refit_on == "asymmetric")


def _cut(model: nn.Module, config: PruningConfig, plan: PruningPlan, scopes: list[PrunableScope]) -> None:
    """Compensate from the dense model's statistics and cut ``scopes`` (one layer's) as the plan says."""
    if config.compensate != "none":
        compensation = COMPENSATIONS[config.compensate]()
        choose_groups(model, plan.kept, scopes, plan.statistics, compensation)
        compensate(model, [s for s in scopes if s.name in plan.kept], plan.kept, plan.statistics, compensation)
    apply_plan(model, scopes, plan.kept, allow_empty=True)  # the plan's target chose any empty scope


def _cut_on_walk(model: nn.Module, plan: PruningPlan, scopes: list[PrunableScope], walk: LayerWalk,
                 layer: nn.Module, compensation: Compensation) -> None:
    """Compensate and cut one layer's ``scopes`` in order, each from its consumer's statistics on the walk's inputs
    with the scopes before it already cut: the MLP is refit on what the cut attention gives it."""
    pending = [scope for scope in scopes if scope.name in plan.kept]
    walk.enter(layer)
    stats = None
    for position, scope in enumerate(pending):
        if stats is None:  # one pass gathers every consumer's input still to come
            stats = walk.statistics(layer, pending[position:], gram=compensation.second_moments)
            if has_offloaded_weights(model):  # held to one layer: the d×d moments in a file, their memory for OBS
                for channels in stats.channels.values():
                    channels.spill_second_moments()
        choose_groups(model, plan.kept, [scope], stats, compensation)
        # popped: a consumer's d×d second moments are freed once it is refit, before the next consumer's are worked on
        compensate_scope(model, scope, plan.kept[scope.name], stats.channels.pop(scope.name), compensation)
        changed = len(set(plan.kept[scope.name])) < scope.num_groups
        apply_plan(model, [scope], plan.kept, allow_empty=True)
        if changed:
            stats = None  # the consumers after this one now see other inputs


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

