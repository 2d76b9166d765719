"""What every peer baseline shares: the plan it returns, how a plan is applied, budget bookkeeping,
and the layer-at-a-time forward that sequential methods (Wanda-sp) and ShortGPT need.

The baselines are built on hf-prune's adapters (which groups exist and what they cost), masks,
statistics, compensation and surgery — never on its allocators — so that a difference in quality
between a peer and hf-prune comes from the peer's *decisions*, not from a different pruning engine.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hf_prune.adapters import PrunableScope, prunable_parameters
from hf_prune.cut.compensation import fold_removed_means
from hf_prune.cut.surgery import apply_plan
from hf_prune.errors import BudgetError


@dataclass
class BaselinePlan:
    """A peer's decision. ``kept`` has the format of ``hf_prune.cut.apply.PruningPlan.kept`` (scope name ->
    sorted kept group indices); ``channel_means`` (consumer input means, per scope) is set by methods
    that compensate the removed channels' mean in a bias (FLAP); ``removed_layers`` by depth pruning
    (ShortGPT), whose layers are replaced by the identity instead."""

    method: str
    kept: dict[str, list[int]] = field(default_factory=dict)
    channel_means: dict[str, torch.Tensor] | None = None
    removed_layers: list[int] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def params_per_group(model: nn.Module, scopes: Sequence[PrunableScope]) -> dict[str, int]:
    return {scope.name: scope.params_per_group(model) for scope in scopes}


def removed_params(model: nn.Module, scopes: Sequence[PrunableScope], plan: BaselinePlan) -> int:
    """Prunable parameters the plan removes (a removed layer removes all of its groups)."""
    removed = 0
    for scope in scopes:
        if scope.layer in plan.removed_layers:
            removed += scope.num_groups * scope.params_per_group(model)
        elif scope.name in plan.kept:
            removed += (scope.num_groups - len(plan.kept[scope.name])) * scope.params_per_group(model)
    return removed


def achieved_sparsity(model: nn.Module, scopes: Sequence[PrunableScope], plan: BaselinePlan) -> float:
    """Removed share of the prunable (attention + MLP) parameters, as hf-prune reports it."""
    return removed_params(model, scopes, plan) / prunable_parameters(model, list(scopes))


def check_kept_count(scope: PrunableScope, keep: int) -> int:
    if keep < 1:
        raise BudgetError(f"{scope.name}: the budget removes every {scope.unit}; a layer must keep one")
    return min(keep, scope.num_groups)


def fill_mlp_to_budget(
    model: nn.Module, scopes: Sequence[PrunableScope], attention_removed: int, sparsity: float,
    mlp_scopes: Sequence[PrunableScope],
) -> dict[str, int]:
    """Neurons to remove in each of ``mlp_scopes`` (the same count in each) so that, with the attention
    parameters already removed, the total removal is the requested share of all prunable parameters.

    The peers apply one ratio to heads and neurons alike; with 3-9 KV groups per layer the head count
    rounds hard (one group is a third of SmolLM2's attention), so at a *matched* budget the MLP absorbs
    the rounding. The result is within one neuron per MLP scope of the budget.
    """
    target = sparsity * prunable_parameters(model, list(scopes)) - attention_removed
    cost = sum(scope.params_per_group(model) for scope in mlp_scopes)  # one neuron in every MLP scope
    per_scope = max(0, int(round(target / cost)))
    return {scope.name: per_scope for scope in mlp_scopes}


@torch.no_grad()
def materialize(model: nn.Module, scopes: Sequence[PrunableScope], plan: BaselinePlan, *, inplace: bool = False) -> nn.Module:
    """The pruned model: compensation folded into biases (if the plan has means), groups cut by
    hf-prune's surgery, removed layers replaced by the identity. A copy unless ``inplace``."""
    target = model if inplace else copy.deepcopy(model)
    if plan.channel_means is not None:
        for scope in scopes:
            if scope.name in plan.kept:
                fold_removed_means(target, scope, plan.kept[scope.name], plan.channel_means[scope.name])
    apply_plan(target, [scope for scope in scopes if scope.layer not in plan.removed_layers], plan.kept)
    if plan.removed_layers:
        drop_layers(target, plan.removed_layers)
    return target


class IdentityLayer(nn.Module):
    """Stands in for a removed decoder layer: returns its hidden states unchanged (the residual
    stream passes through, which is what deleting the layer means). Keeps the layer's index, so KV
    cache indices of the other layers stay valid."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


def drop_layers(model: nn.Module, layers: Iterable[int], decoder_layers: nn.ModuleList | None = None) -> None:
    decoder_layers = decoder_layers if decoder_layers is not None else model.model.layers
    for index in layers:
        decoder_layers[index] = IdentityLayer()


def hidden_of(args: tuple, kwargs: Mapping[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def run_layer(layer: nn.Module, inputs: list[tuple[tuple, dict]]) -> list[tuple[tuple, dict]]:
    """One decoder layer on every captured batch; its outputs become the next layer's inputs."""
    out = []
    for args, kwargs in inputs:
        result = layer(*args, **kwargs)
        hidden = result[0] if isinstance(result, tuple) else result
        out.append(with_hidden(args, kwargs, hidden))
    return out
