"""FLAP (An et al., "Fluctuation-based Adaptive Structured Pruning for Large Language Models", AAAI 2024,
arXiv 2312.11983), re-implemented on hf-prune's scopes, its default setting ``--metrics WIFV
--structure AL-AM`` (adaptive across layers *and* modules), with bias compensation.

Followed: the paper's method section — fluctuation pruning metric, adaptive structure search with
standardised scores, baseline bias compensation — and the official code, ``CASIA-IVA-Lab/FLAP``
``lib/prune.py``: ``metrics['WIFV']``, ``prune_flap`` (the AL-AM branch) and ``compress``
(``output_bias = (mean_inp * ~mask) @ W.T``), with ``lib/layerwrapper.py`` ``BiasGPT`` for the statistics.

What their code does, step for step:
1. Per layer, at the input of ``o_proj`` and ``down_proj``, over dense-model calibration tokens: the
   channel mean (``baseline_inp``) and fluctuation (``fluc_inp``). WIFV of channel j is
   ``fluc_j * ||W_:,j||²``; for ``o_proj`` it is **squared again** (``metrics[...] ** 2``).
2. Standardise each layer's row of channel metrics: ``(x - mean) / std`` over that layer's channels
   (``standarlization``, ``torch.std`` = unbiased), separately for attention and MLP; a head's score
   is the **mean** of its standardised channels.
3. One global ranking of all heads and neurons of all layers; each unit is weighted by the
   parameters it removes (a head = 512/3 neurons in LLaMA-7B); the threshold is the score at which
   the cumulative weight of the units above it is closest to (1 - ratio) of the total; a unit is kept
   when its score is *strictly* above the threshold.
4. Fold ``W[:, removed] @ mean[removed]`` into the consumer's bias.

Where this differs from their code, and why:
- GQA: the attention unit is hf-prune's KV group (its ``n_rep`` query heads share one KV head), so a
  group's score is the mean of its ``n_rep * head_dim`` standardised ``o_proj`` input channels and its
  weight is its parameter cost over a neuron's (both from the adapter; 512/3 for SmolLM2, as for
  LLaMA-7B's heads).
- Fluctuation is hf-prune's float64 unbiased token variance over all calibration tokens. ``BiasGPT``
  uses a running update per calibration *sequence* that skips the first sequence's contribution; up
  to that, both estimate the same variance, and the per-layer standardisation removes any common scale.
- A layer keeps at least one group (FLAP's threshold can empty a layer; hf-prune's surgery refuses
  to): such a layer keeps its best group, reported in ``details["forced_keeps"]``.
- Calibration text: the project's shared calibration tokens instead of WikiText-2 (1024 x 128).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hf_prune.adapters import PrunableScope, prunable_parameters
from hf_prune.calibration.statistics import CalibrationStatistics

from .common import BaselinePlan


def standardize(rows: torch.Tensor) -> torch.Tensor:
    """FLAP's ``standarlization``: each row (one layer) to zero mean and unit (unbiased) std."""
    return (rows - rows.mean(dim=1, keepdim=True)) / rows.std(dim=1, keepdim=True)


def wifv(model: nn.Module, scope: PrunableScope, stats: CalibrationStatistics) -> torch.Tensor:
    """Weighted input feature variance per consumer input channel: Var(X_j) * ||W_:,j||²."""
    weight = model.get_submodule(scope.consumer.path).weight.detach().to(torch.float64)
    return stats.channels[scope.name].variance * weight.pow(2).sum(dim=0).cpu()


def flap_group_scores(
    model: nn.Module, scopes: Sequence[PrunableScope], stats: CalibrationStatistics
) -> dict[str, torch.Tensor]:
    """Standardised score per group (steps 1-2). Every scope of a kind must have the same width, as in
    FLAP's ``torch.stack`` of the per-layer metric lists."""
    scores: dict[str, torch.Tensor] = {}
    for kind in ("attention", "mlp"):
        of_kind = [scope for scope in scopes if scope.kind == kind]
        if not of_kind:
            continue
        metric = torch.stack([wifv(model, scope, stats) for scope in of_kind])
        if kind == "attention":
            metric = metric**2
        metric = standardize(metric)
        for scope, row in zip(of_kind, metric):
            scores[scope.name] = row.reshape(scope.num_groups, scope.consumer.block).mean(dim=1)
    return scores


def global_threshold_plan(
    scopes: Sequence[PrunableScope], scores: dict[str, torch.Tensor], cost: dict[str, int], keep_params: float
) -> tuple[dict[str, list[int]], float, list[str]]:
    """Step 3: keep the units above the score at which the kept cost is closest to ``keep_params``."""
    names, values, weights = [], [], []
    for scope in scopes:
        names += [(scope.name, g) for g in range(scope.num_groups)]
        values.append(scores[scope.name])
        weights.append(torch.full((scope.num_groups,), float(cost[scope.name]), dtype=torch.float64))
    values_t, weights_t = torch.cat(values), torch.cat(weights)
    order = torch.sort(values_t, descending=True, stable=True).indices
    cumulative = torch.cumsum(weights_t[order], 0)
    position = int(torch.argmin((cumulative - keep_params).abs()))
    threshold = float(values_t[order[position]])
    kept: dict[str, list[int]] = {scope.name: [] for scope in scopes}
    for index in range(len(names)):
        if float(values_t[index]) > threshold:
            name, group = names[index]
            kept[name].append(group)
    forced = []
    for scope in scopes:
        if not kept[scope.name]:
            kept[scope.name] = [int(torch.argmax(scores[scope.name]))]
            forced.append(scope.name)
    return kept, threshold, forced


def flap_plan(
    model: nn.Module, scopes: Sequence[PrunableScope], stats: CalibrationStatistics, sparsity: float,
    *, compensate: bool = True,
) -> BaselinePlan:
    """FLAP's plan at ``sparsity`` (share of all attention + MLP parameters removed); ``stats`` are
    channel statistics of the dense model (``hf_prune.calibration.statistics.collect_channel_statistics``)."""
    scores = flap_group_scores(model, scopes, stats)
    cost = {scope.name: scope.params_per_group(model) for scope in scopes}
    keep_params = (1.0 - sparsity) * prunable_parameters(model, list(scopes))
    kept, threshold, forced = global_threshold_plan(scopes, scores, cost, keep_params)
    means = {scope.name: stats.channels[scope.name].mean for scope in scopes} if compensate else None
    return BaselinePlan("flap", kept, means, details={"threshold": threshold, "forced_keeps": forced,
                                                      "scores": scores})
