"""Deciding and cutting: statistics, scores, allocation, choice, compensation, cut, relabel.

The whole user path (load, recover, evaluate, save, push) is :mod:`hf_prune.pipeline`, which calls
:func:`make_plan` and :func:`apply_pruning` from here.

Every step is delegated (adapters, statistics, importance, allocation, compensation, surgery,
checkpoint); this module only orders them and records what happened in a :class:`PruningReport`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .adapters import PrunableScope, get_adapter
from .allocation import AllocationRequest, allocate_uniform
from .calibration import load_calibration
from .checkpoint import as_pruned_model
from .compensation import compensate
from .config import PruningConfig
from .data import BUILTIN
from .errors import BudgetError, ConfigError
from .importance import CHANNELS, GRADIENTS, get_importance
from .layerwise import LayerByLayer
from .statistics import CalibrationStatistics, collect_channel_statistics, collect_taylor_statistics
from .surgery import apply_plan
from .targets import get_target

logger = logging.getLogger(__name__)


@dataclass
class LayerSummary:
    layer: int
    kv_groups_before: int
    kv_groups_after: int
    neurons_before: int
    neurons_after: int
    #: what uniform allocation would keep at the same budget (reported beside EMP), if computed
    kv_groups_uniform: int | None = None
    neurons_uniform: int | None = None


@dataclass
class PruningReport:
    """What a run did. Everything but the plan, the scores and the trajectory also lives in the pruned
    model's ``config.hf_prune`` (:meth:`to_info`), so the model card can be rebuilt from a saved checkpoint."""

    config: dict[str, Any]
    layers: list[LayerSummary]
    params_before: int
    params_after: int
    prunable_before: int
    prunable_after: int
    allocation: dict[str, Any] = field(default_factory=dict)
    calibration_tokens: int = 0
    calibration_seconds: float = 0.0
    calibration_processes: int = 1
    plan: dict[str, list[int]] = field(repr=False, default_factory=dict)
    scores: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    #: Hyperflux: one entry per scheduler tick (density, target, pressure, loss, open groups per scope)
    trajectory: list[dict[str, Any]] = field(repr=False, default_factory=list)
    #: (name, groups) of the scopes that were pruned, in order: labels of the trajectory's "open" lists
    pruned_scopes: list[tuple[str, int]] = field(default_factory=list)
    #: whether importance scores chose the groups (not so for Hyperflux gates that started uniform)
    scored: bool = False
    #: the model that was pruned (Hub id, or a name for a local one), set by the pipeline
    base_model: str | None = None
    #: lm-eval retention table and quality gate (:mod:`hf_prune.quality.retention`), when evaluated
    quality: dict[str, Any] = field(default_factory=dict)
    #: recovery after the cut (:mod:`hf_prune.recovery`): method, perplexity before / after, cost
    recovery: dict[str, Any] = field(default_factory=dict)
    version: str = __version__

    @property
    def achieved_sparsity(self) -> float:
        """Removed share of the prunable (attention + MLP) parameters."""
        return 1.0 - self.prunable_after / self.prunable_before

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.pop("scores")
        values.pop("trajectory")
        values["achieved_sparsity"] = self.achieved_sparsity
        return values

    def to_info(self) -> dict[str, Any]:
        """The report as stored in ``config.hf_prune`` of the pruned model (no plan, scores or trajectory)."""
        values = self.to_dict()
        values.pop("plan")
        values["achieved_sparsity"] = round(self.achieved_sparsity, 6)
        return values

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "PruningReport":
        """Rebuild the report of a saved pruned model from its ``config.hf_prune``."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in info.items() if key in known}
        values["layers"] = [LayerSummary(**row) for row in values.get("layers", [])]
        values["pruned_scopes"] = [tuple(pair) for pair in values.get("pruned_scopes", [])]
        return cls(**values)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def prunable_parameters(model: nn.Module, scopes: list[PrunableScope]) -> int:
    return sum(scope.num_groups * scope.params_per_group(model) for scope in scopes)


def top_groups(scores: torch.Tensor, keep: int) -> list[int]:
    """Indices of the ``keep`` highest scores, ascending. Ties go to the lower index (stable sort),
    so a plan is reproducible."""
    order = torch.sort(scores, descending=True, stable=True).indices[:keep]
    return sorted(order.tolist())


#: calibration rows are this long unless asked otherwise (or the model's context is shorter)
DEFAULT_SEQ_LEN = 512


def needs_calibration(config: PruningConfig) -> bool:
    """Whether the run reads calibration text (data-driven scores, compensation or learned gates)."""
    return get_target(config.target).planner or bool(_needed_statistics(config))


def calibration_ids(model: nn.Module, tokenizer: Any, config: PruningConfig) -> torch.Tensor | None:
    """Token rows for the statistics or gate training the config needs, or None when the run is data-free."""
    if not needs_calibration(config):
        return None
    calibration = config.calibration
    if calibration.source is None:
        planned = get_target(config.target).planner
        what = (f"target {config.target!r}" if planned else f"importance {config.importance!r}") + (
            f" with --compensate {config.compensate}" if config.compensate != "none" else "")
        raise ConfigError(f"{what} needs calibration text: pass --calibration FILE.txt|FILE.jsonl|DATASET (text "
                          f"of your model's domain), or '{BUILTIN}' for the small English sample shipped with hf-prune")
    return load_calibration(calibration.text_source(), tokenizer, samples=calibration.samples + config.held_out_rows,
                            seq_len=resolve_seq_len(model, calibration.seq_len), seed=config.seed)


def resolve_seq_len(model: nn.Module, seq_len: int | None) -> int:
    """Rows as long as asked, at most the model's context (a longer request is capped with a warning);
    by default the model's context, at most :data:`DEFAULT_SEQ_LEN`."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if seq_len is None:
        return min(DEFAULT_SEQ_LEN, limit) if limit else DEFAULT_SEQ_LEN
    if limit and seq_len > limit:
        logger.warning("seq_len %d exceeds the model's max_position_embeddings %d; using %d", seq_len, limit, limit)
        return limit
    return seq_len


def _needed_statistics(config: PruningConfig) -> set[str]:
    needed = set(get_importance(config.importance).requires) if get_target(config.target).scores(config) else set()
    if config.compensate != "none":
        needed.add(CHANNELS)
    return needed


def collect_statistics(
    model: nn.Module, scopes: list[PrunableScope], config: PruningConfig, input_ids: torch.Tensor | None
) -> CalibrationStatistics | None:
    needed = _needed_statistics(config)
    if not needed:
        return None
    if input_ids is None:
        raise ConfigError(f"importance {config.importance!r} / compensation needs calibration token ids")
    stats = CalibrationStatistics()
    was_training = model.training
    model.eval()
    if CHANNELS in needed:
        adapter = get_adapter(model)
        collect_channel_statistics(
            model, scopes, input_ids, batch_size=config.calibration.batch_size, sequential=config.calibration.sequential,
            layers=adapter.decoder_layers(model) if config.calibration.sequential else None, stats=stats,
            gram=config.compensate == "lstsq",
        )
    if GRADIENTS in needed:
        tokens_before = stats.tokens
        collect_taylor_statistics(model, scopes, input_ids, batch_size=config.calibration.batch_size, stats=stats)
        if CHANNELS in needed:
            stats.tokens = tokens_before  # the same tokens, seen twice
    model.train(was_training)
    stats.reduce_across_processes()
    return stats


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


@torch.no_grad()
def make_plan(
    model: nn.Module,
    config: PruningConfig,
    input_ids: torch.Tensor | None = None,
    statistics: CalibrationStatistics | None = None,
) -> PruningPlan:
    """Score or learn, and allocate: which groups of every selected scope to keep. The model is unchanged.

    ``input_ids`` (``[samples, seq_len]``, see :func:`calibration_ids`) are needed by every criterion
    but magnitude, by bias compensation and by the planners (Hyperflux, search). Their last
    ``config.held_out_rows`` rows are kept out of the scores (the search measures costs on them).
    ``statistics`` already collected on this (dense) model by :func:`collect_statistics` may be passed
    instead, to score once and prune at several budgets.
    """
    held_out_ids = None
    if input_ids is not None and config.held_out_rows:
        if input_ids.shape[0] <= config.held_out_rows:
            raise ConfigError(f"{input_ids.shape[0]} calibration rows leave none for scoring after the "
                              f"{config.held_out_rows} held-out rows; raise --calibration-samples")
        input_ids, held_out_ids = input_ids[: -config.held_out_rows], input_ids[-config.held_out_rows:]
    scopes = get_adapter(model).scopes(model)
    params_per_group = {scope.name: scope.params_per_group(model) for scope in scopes}
    selected = [scope for scope in scopes if config.selects(scope.kind)]
    stats = statistics if statistics is not None else collect_statistics(model, selected, config, input_ids)
    request = AllocationRequest(
        scopes=selected, params_per_group=params_per_group,
        total_prunable=sum(scope.num_groups * params_per_group[scope.name] for scope in scopes),
        sparsity=config.sparsity, beta=config.beta, mlp_multiple=config.mlp_multiple, statistics=stats,
    )
    target = get_target(config.target)
    if target.scores(config):
        importance = get_importance(config.importance)
        request.scores = {
            scope.name: importance(model, scope, stats)
            for scope in tqdm(selected, desc=f"scoring ({config.importance})", unit="scope", leave=False)
        }
    if target.planner:
        kept, details, trajectory = target.load()(model, request, config, input_ids, held_out_ids)
    else:
        allocation = target.load()(request)
        kept = {name: top_groups(request.scores[name], count) for name, count in allocation.kept.items()}
        details, trajectory = allocation.details, []
    return PruningPlan(kept, details, request.scores, trajectory, _uniform_for_comparison(request, config), stats)


@torch.no_grad()
def apply_pruning(model: nn.Module, config: PruningConfig, plan: PruningPlan,
                  layer_by_layer: LayerByLayer | None = None) -> PruningReport:
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
    info = report.to_info()
    as_pruned_model(model, scopes_after, info)
    logger.info("pruned %s -> %s parameters (%.2f%% of prunable removed)",
                f"{params_before:,}", f"{report.params_after:,}", 100 * report.achieved_sparsity)
    return report


def _cut(model: nn.Module, config: PruningConfig, plan: PruningPlan, scopes: list[PrunableScope]) -> None:
    """Compensate and cut ``scopes`` (all of them, or one layer's) as the plan says."""
    if config.compensate != "none":
        compensate(model, [s for s in scopes if s.name in plan.kept], plan.kept, plan.statistics,
                   method=config.compensate)
    apply_plan(model, scopes, plan.kept, allow_empty=True)  # the plan's target chose any empty scope


def prune(
    model: nn.Module,
    config: PruningConfig,
    input_ids: torch.Tensor | None = None,
    statistics: CalibrationStatistics | None = None,
) -> PruningReport:
    """Prune ``model`` in place by ``config`` (:func:`make_plan` then :func:`apply_pruning`).

    Afterwards the model is an instance of its family's pruned class (``PrunedLlamaForCausalLM``
    etc.), so ``save_pretrained`` writes a checkpoint that reloads with its new shapes.
    """
    return apply_pruning(model, config, make_plan(model, config, input_ids, statistics))


def _uniform_for_comparison(request: AllocationRequest, config: PruningConfig) -> dict[str, int] | None:
    """Uniform counts at the same budget, reported beside a non-uniform target (None if not meaningful)."""
    if config.target == "uniform" or request.sparsity is None:
        return None
    try:
        return allocate_uniform(request).kept
    except BudgetError:
        return None
