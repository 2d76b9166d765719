"""Wanda-sp: Wanda's |W|·||X|| score applied to whole heads and neurons, the same ratio in every layer.

Structured Wanda as the FLAP paper defines and runs it as a baseline (An et al., arXiv 2312.11983,
experiments / baselines; Wanda: Sun et al., arXiv 2306.11695, the pruning metric section). Code
followed: ``CASIA-IVA-Lab/FLAP`` ``lib/prune.py`` ``prune_wanda_sp`` with ``lib/layerwrapper.py``
``WrappedGPT`` (``scaler_row`` = Σ x² / samples):

- Per layer, at the input of ``o_proj`` and ``down_proj``: ``W_metric = |W| * sqrt(scaler_row)``,
  averaged over the output rows (``mean(axis=0)``) → one value per input channel, i.e.
  ``mean_i |W_ij| * ||X_j||`` up to a constant. A head's score is the **sum** over its channels.
- Remove ``int(ratio * heads)`` heads and ``int(ratio * neurons)`` neurons with the lowest scores
  (``thresh = sort(...)[int(...)]``, keep ``>= thresh``), in every layer.
- **Sequential**: each layer's statistics are taken on the output of the already-pruned earlier
  layers (``inps, outs = outs, inps # the pruned output as input to the next layer``); attention and
  MLP of one layer are scored from the same pass, before either is pruned. No bias compensation
  (``compress(..., bias=False)``).

Differences, and why:
- GQA: the attention unit is hf-prune's KV group (sum over its ``n_rep * head_dim`` channels).
- Pruning is done with hf-prune's masks during the sequential pass (a mask on the consumer input is
  exactly the sliced model), so the caller gets a plan rather than a modified model.
- ``match_budget=True`` (default) keeps their rule for heads and sets the per-layer neuron count so
  the total meets the requested share of prunable parameters (see ``common.fill_mlp_to_budget``);
  on SmolLM2 (3 KV groups per layer) their rule alone removes no group at 20% and 15.0% of the
  prunable parameters in all.
  ``match_budget=False`` is their rule exactly (report the achieved sparsity).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hf_prune.adapters import PrunableScope
from hf_prune.calibration.statistics import ChannelStatistics, first_layer_inputs
from hf_prune.cut.masks import GroupMasks, keep_masks
from hf_prune.plan.importance import top_groups

from .common import BaselinePlan, check_kept_count, fill_mlp_to_budget, run_layer


def wanda_sp_scores(model: nn.Module, scope: PrunableScope, channels: ChannelStatistics) -> torch.Tensor:
    """Σ over a group's channels of mean_i |W_ij| * ||X_j||₂."""
    weight = model.get_submodule(scope.consumer.path).weight.detach().to(torch.float64)
    per_channel = weight.abs().mean(dim=0).cpu() * channels.norm
    return scope.sum_per_group(per_channel, scope.consumer)


def removed_by_ratio(scope: PrunableScope, ratio: float) -> int:
    """``int(ratio * n)``: how many groups their per-layer threshold removes."""
    return int(ratio * scope.num_groups)


@torch.no_grad()
def wanda_sp_plan(
    model: nn.Module, scopes: Sequence[PrunableScope], layers: nn.ModuleList, calibration: torch.Tensor,
    sparsity: float, *, batch_size: int = 1, match_budget: bool = True,
) -> BaselinePlan:
    """Wanda-sp's plan at ``sparsity``; ``calibration`` is ``[samples, seq_len]`` token ids."""
    by_layer: dict[int, list[PrunableScope]] = {}
    for scope in scopes:
        by_layer.setdefault(scope.layer, []).append(scope)
    attention = [s for s in scopes if s.kind == "attention"]
    mlp = [s for s in scopes if s.kind == "mlp"]
    cost = {s.name: s.params_per_group(model) for s in scopes}
    remove = {s.name: removed_by_ratio(s, sparsity) for s in scopes}
    if match_budget:
        remove.update(fill_mlp_to_budget(model, scopes, sum(remove[s.name] * cost[s.name] for s in attention),
                                         sparsity, mlp))
    kept: dict[str, list[int]] = {}
    inputs = first_layer_inputs(model, layers, calibration.split(batch_size))
    masks: list[GroupMasks] = []
    try:
        for index, layer in enumerate(layers):
            layer_scopes = by_layer.get(index, [])
            channels = {s.name: ChannelStatistics.zeros(model.get_submodule(s.consumer.path).in_features)
                        for s in layer_scopes}
            handles = [model.get_submodule(s.consumer.path).register_forward_pre_hook(
                lambda module, args, c=channels[s.name]: c.update(args[0])) for s in layer_scopes]
            try:
                run_layer(layer, inputs)
            finally:
                for handle in handles:
                    handle.remove()
            for scope in layer_scopes:
                keep = check_kept_count(scope, scope.num_groups - remove[scope.name])
                kept[scope.name] = top_groups(wanda_sp_scores(model, scope, channels[scope.name]), keep)
            masks.append(GroupMasks(model, layer_scopes, keep_masks(layer_scopes, {s.name: kept[s.name]
                                                                                    for s in layer_scopes})).attach())
            inputs = run_layer(layer, inputs)  # the pruned layer's output feeds the next layer
    finally:
        for mask in masks:
            mask.remove()
    return BaselinePlan("wanda-sp", kept, details={"ratio": sparsity, "match_budget": match_budget})
