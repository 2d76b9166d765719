"""Bias compensation (FLAP): replace each removed channel by its calibration mean.

When groups are cut, the consumer (``o_proj`` / ``down_proj``) loses input columns j. Their average
contribution W_:,j · E[X_j] is folded into the consumer's bias, so the layer's output keeps its mean
on calibration data and only the removed channels' *fluctuation* is lost — which is exactly what the
fluctuation criterion measures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .adapters import PrunableScope
from .statistics import CalibrationStatistics
from .surgery import block_indices, ensure_bias


@torch.no_grad()
def fold_removed_means(model: nn.Module, scope: PrunableScope, keep: Sequence[int], channel_mean: torch.Tensor) -> None:
    """Add W[:, removed] @ mean[removed] to the consumer's bias (before the columns are cut)."""
    removed = sorted(set(range(scope.num_groups)) - set(int(g) for g in keep))
    if not removed:
        return
    consumer = ensure_bias(model, scope.consumer.path)
    columns = block_indices(removed, scope.consumer.block, device=consumer.weight.device)
    weight = consumer.weight.detach().index_select(1, columns).to(torch.float64)
    mean = channel_mean.to(device=weight.device, dtype=torch.float64).index_select(0, columns)
    consumer.bias.add_((weight @ mean).to(consumer.bias.dtype))


def compensate(
    model: nn.Module, scopes: Sequence[PrunableScope], plan: Mapping[str, Sequence[int]], stats: CalibrationStatistics
) -> None:
    for scope in scopes:
        if scope.name in plan:
            fold_removed_means(model, scope, plan[scope.name], stats.channels[scope.name].mean)
