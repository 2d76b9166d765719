"""The pruning pipeline, once: score every group, allocate a budget, pick, cut, relabel.

Every step is delegated (adapters, importance, allocation, surgery, checkpoint); this module only
orders them and records what happened in a :class:`PruningReport`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .adapters import PrunableScope, get_adapter
from .allocation import ALLOCATORS
from .checkpoint import as_pruned_model
from .config import PruningConfig
from .importance import get_importance
from .surgery import apply_plan

logger = logging.getLogger(__name__)


@dataclass
class LayerSummary:
    layer: int
    kv_groups_before: int
    kv_groups_after: int
    neurons_before: int
    neurons_after: int


@dataclass
class PruningReport:
    config: dict[str, Any]
    layers: list[LayerSummary]
    params_before: int
    params_after: int
    prunable_before: int
    prunable_after: int
    plan: dict[str, list[int]] = field(repr=False, default_factory=dict)

    @property
    def achieved_sparsity(self) -> float:
        """Removed share of the prunable (attention + MLP) parameters."""
        return 1.0 - self.prunable_after / self.prunable_before

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["achieved_sparsity"] = self.achieved_sparsity
        return values


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


def _layer_summaries(before: list[PrunableScope], after: list[PrunableScope]) -> list[LayerSummary]:
    counts: dict[int, dict[str, int]] = {}
    for label, scopes in (("before", before), ("after", after)):
        for scope in scopes:
            counts.setdefault(scope.layer, {})[f"{scope.kind}_{label}"] = scope.num_groups
    return [
        LayerSummary(layer, c["attention_before"], c["attention_after"], c["mlp_before"], c["mlp_after"])
        for layer, c in sorted(counts.items())
    ]


def plan_pruning(model: nn.Module, config: PruningConfig) -> dict[str, list[int]]:
    """Scope name -> kept group indices, for the scopes that ``config.units`` selects."""
    adapter = get_adapter(model)
    all_scopes = adapter.scopes(model)
    scopes = [scope for scope in all_scopes if config.selects(scope.kind)]
    params_per_group = {scope.name: scope.params_per_group(model) for scope in all_scopes}
    total = sum(scope.num_groups * params_per_group[scope.name] for scope in all_scopes)
    kept_counts = ALLOCATORS[config.target](scopes, params_per_group, config.sparsity, total)
    importance = get_importance(config.importance)
    plan = {}
    for scope in tqdm(scopes, desc=f"scoring ({config.importance})", unit="scope", leave=False):
        plan[scope.name] = top_groups(importance(model, scope), kept_counts[scope.name])
    return plan


@torch.no_grad()
def prune(model: nn.Module, config: PruningConfig) -> PruningReport:
    """Prune ``model`` in place by ``config`` and return what was done.

    Afterwards the model is an instance of its family's pruned class (``PrunedLlamaForCausalLM``
    etc.), so ``save_pretrained`` writes a checkpoint that reloads with its new shapes.
    """
    adapter = get_adapter(model)
    scopes_before = adapter.scopes(model)
    params_before = count_parameters(model)
    prunable_before = prunable_parameters(model, scopes_before)

    plan = plan_pruning(model, config)
    apply_plan(model, scopes_before, plan)

    scopes_after = adapter.scopes(model)
    report = PruningReport(
        config=config.to_dict(),
        layers=_layer_summaries(scopes_before, scopes_after),
        params_before=params_before,
        params_after=count_parameters(model),
        prunable_before=prunable_before,
        prunable_after=prunable_parameters(model, scopes_after),
        plan=plan,
    )
    info = {
        "version": __version__,
        "config": config.to_dict(),
        "achieved_sparsity": round(report.achieved_sparsity, 6),
        "params_before": report.params_before,
        "params_after": report.params_after,
    }
    as_pruned_model(model, scopes_after, info)
    logger.info("pruned %s -> %s parameters (%.2f%% of prunable removed)",
                f"{params_before:,}", f"{report.params_after:,}", 100 * report.achieved_sparsity)
    return report
