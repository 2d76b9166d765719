"""The plan: which groups of every scope stay — statistics, scores, the target's rule, and which groups.

:func:`make_plan` decides without changing the model; :func:`hf_prune.cut.apply.apply_pruning` cuts by the plan.
What the config needs (calibration text, statistics) is decided here, once, from what the target and the
criterion say they read: no target or criterion is named in this module.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import PrunableScope, get_adapter
from ..calibration.rows import calibration_rows
from ..calibration.statistics import CalibrationStatistics, collect_channel_statistics, collect_taylor_statistics
from ..config import PruningConfig
from ..cut.apply import PruningPlan, apply_pruning, refits_on_pruned_inputs
from ..errors import BudgetError, ConfigError
from ..registry import COMPENSATIONS, TARGETS
from ..report import PruningReport
from ..runtime.modes import eval_mode
from .allocation import Allocation, AllocationRequest, Target, allocate_uniform, as_target
from .importance import CHANNELS, GRADIENTS, get_importance, top_groups


def target_of(config: PruningConfig) -> Target:
    return as_target(TARGETS.require(config.target))


def needed_statistics(config: PruningConfig) -> set[str]:
    """The calibration statistics the run reads: the criterion's, when scores are used, and the channels'
    (means, and second moments for least squares) when the cut compensates."""
    needed = set(get_importance(config.importance).requires) if target_of(config).reads_scores(config) else set()
    if config.compensate != "none":
        needed.add(CHANNELS)
    return needed


def needs_dense_second_moments(config: PruningConfig) -> bool:
    """Whether the dense model's d×d second moments are gathered before the cut: only when a least-squares refit
    reads them — ``--refit-on dense``, or a target that measures compensated candidates on a model in memory. With
    ``--refit-on pruned`` the cut gathers one layer's at a time as it walks the layers, and a search in one pass
    over the layers (``--sequential``, ``--layerwise``) does the same for its candidates."""
    if config.compensate == "none" or not COMPENSATIONS[config.compensate].second_moments:
        return False
    if not refits_on_pruned_inputs(config):
        return True
    return target_of(config).compensates_candidates and not config.calibration.sequential


def check_budget(model: nn.Module, config: PruningConfig) -> None:
    """Refuse a sparsity that the selected units cannot hold, from the shapes alone (a model on ``meta`` will do),
    so that it is refused before the model is loaded or a token is processed."""
    if config.sparsity is None:
        return
    scopes = get_adapter(model).scopes(model)
    per_group = {scope.name: scope.params_per_group(model) for scope in scopes}
    request = AllocationRequest(scopes=[scope for scope in scopes if config.selects(scope.kind)],
                                params_per_group=per_group, sparsity=config.sparsity,
                                total_prunable=sum(scope.num_groups * per_group[scope.name] for scope in scopes))
    if request.selected_params < round(config.sparsity * request.total_prunable):
        held = request.selected_params / request.total_prunable
        raise BudgetError(f"sparsity {config.sparsity:g} is more than the selected units hold (--units "
                          f"{config.units}: {held:.0%} of the prunable parameters); {request.remedy()}")


def needs_calibration(config: PruningConfig) -> bool:
    """Whether the run reads calibration text (data-driven scores, compensation, or a rule that reads rows)."""
    return target_of(config).reads_rows or bool(needed_statistics(config))


def calibration_ids(model: nn.Module, tokenizer: Any, config: PruningConfig) -> torch.Tensor | None:
    """Token rows for the statistics and the target the config needs (the target's held-out rows after them),
    or None when the run is data-free."""
    if not needs_calibration(config):
        return None
    reader = (f"target {config.target!r}" if target_of(config).reads_rows else f"importance {config.importance!r}") + (
        f" with --compensate {config.compensate}" if config.compensate != "none" else "")
    return calibration_rows(model, tokenizer, config.calibration, seed=config.seed, held_out=config.held_out_rows,
                            reader=reader)


def collect_statistics(
    model: nn.Module, scopes: list[PrunableScope], config: PruningConfig, input_ids: torch.Tensor | None
) -> CalibrationStatistics | None:
    """The statistics the config needs (:func:`needed_statistics`), summed over every process's rows."""
    needed = needed_statistics(config)
    if not needed:
        return None
    if input_ids is None:
        raise ConfigError(f"importance {config.importance!r} / compensation needs calibration token ids")
    stats = CalibrationStatistics()
    calibration = config.calibration
    with eval_mode(model):
        if CHANNELS in needed:
            second_moments = needs_dense_second_moments(config)
            collect_channel_statistics(
                model, scopes, input_ids, batch_size=calibration.batch_size, sequential=calibration.sequential,
                layers=get_adapter(model).decoder_layers(model) if calibration.sequential else None, stats=stats,
                gram=second_moments)
        if GRADIENTS in needed:
            tokens_before = stats.tokens
            collect_taylor_statistics(model, scopes, input_ids, batch_size=calibration.batch_size, stats=stats)
            if CHANNELS in needed:
                stats.tokens = tokens_before  # the same tokens, seen twice
    stats.reduce_across_processes()
    return stats


@torch.no_grad()
def make_plan(
    model: nn.Module,
    config: PruningConfig,
    input_ids: torch.Tensor | None = None,
    statistics: CalibrationStatistics | None = None,
) -> PruningPlan:
    """Score or learn, and allocate: which groups of every selected scope to keep. The model is unchanged.

    ``input_ids`` (``[samples, seq_len]``, see :func:`calibration_ids`) are needed by every criterion
    but magnitude, by compensation and by the rules that read rows (Hyperflux, search). Their last
    ``config.held_out_rows`` rows are kept out of the scores (the search measures costs on them).
    ``statistics`` already collected on this (dense) model by :func:`collect_statistics` may be passed
    instead, to score once and prune at several budgets.
    """
    rows, held_out = _split_held_out(input_ids, config.held_out_rows)
    scopes = get_adapter(model).scopes(model)
    params_per_group = {scope.name: scope.params_per_group(model) for scope in scopes}
    selected = [scope for scope in scopes if config.selects(scope.kind)]
    stats = statistics if statistics is not None else collect_statistics(model, selected, config, rows)
    request = AllocationRequest(
        scopes=selected, params_per_group=params_per_group,
        total_prunable=sum(scope.num_groups * params_per_group[scope.name] for scope in scopes),
        sparsity=config.sparsity, beta=config.beta, mlp_multiple=config.mlp_multiple, statistics=stats,
        model=model, config=config, rows=rows, held_out_rows=held_out,
    )
    target = target_of(config)
    if target.reads_scores(config):
        importance = get_importance(config.importance)
        request.scores = {
            scope.name: importance(model, scope, stats)
            for scope in tqdm(selected, desc=f"scoring ({config.importance})", unit="scope", leave=False)
        }
    allocation = target.allocate(request)
    kept = allocation.groups if allocation.groups is not None else _top_groups(request, allocation)
    return PruningPlan(kept, allocation.details, request.scores, allocation.trajectory,
                       _uniform_for_comparison(request, config), stats, rows)


def _split_held_out(input_ids: torch.Tensor | None, held_out: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if input_ids is None or not held_out:
        return input_ids, None
    if input_ids.shape[0] <= held_out:
        raise ConfigError(f"{input_ids.shape[0]} calibration rows leave none for scoring after the "
                          f"{held_out} held-out rows; raise --calibration-samples")
    return input_ids[:-held_out], input_ids[-held_out:]


def _top_groups(request: AllocationRequest, allocation: Allocation) -> dict[str, list[int]]:
    return {name: top_groups(request.scores[name], count) for name, count in allocation.kept.items()}


def _uniform_for_comparison(request: AllocationRequest, config: PruningConfig) -> dict[str, int] | None:
    """Uniform counts at the same budget, reported beside a target whose counts differ by layer (None if not
    meaningful)."""
    if TARGETS.traits(config.target).get("equal_counts") or request.sparsity is None:
        return None
    try:
        return allocate_uniform(request).kept
    except BudgetError:
        return None


def prune(
    model: nn.Module,
    config: PruningConfig,
    input_ids: torch.Tensor | None = None,
    statistics: CalibrationStatistics | None = None,
) -> PruningReport:
    """Prune ``model`` in place by ``config`` (:func:`make_plan` then :func:`~hf_prune.cut.apply.apply_pruning`).

    Afterwards the model is an instance of its family's pruned class (``PrunedLlamaForCausalLM``
    etc.), so ``save_pretrained`` writes a checkpoint that reloads with its new shapes.
    """
    return apply_pruning(model, config, make_plan(model, config, input_ids, statistics))
