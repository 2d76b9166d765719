"""``--compensate bias`` (FLAP): the removed columns' average contribution W_:,j · E[X_j] is folded into the
consumer's bias, so the output keeps its mean on calibration data and only the removed channels' *fluctuation*
is lost — which is exactly what the fluctuation criterion measures."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...adapters import PrunableScope
from ...calibration.statistics import ChannelStatistics
from .base import Compensation, compensate_scope


class BiasCompensation(Compensation):
    def refit(self, weight: torch.Tensor, kept: torch.Tensor, removed: torch.Tensor,
              channels: ChannelStatistics, derived: dict | None = None) -> tuple[None, torch.Tensor]:
        removed_weight = weight.detach().index_select(1, removed).to(torch.float64)
        mean = channels.mean.to(device=weight.device, dtype=torch.float64)
        shift = removed_weight @ mean.index_select(0, removed)
        if channels.target_total is not None:  # and the kept channels' drift from the dense model's: W (E y − E x)
            target = channels.target_mean.to(device=weight.device, dtype=torch.float64)
            shift = shift + weight.detach().to(torch.float64) @ (target - mean)
        return None, shift


def fold_removed_means(model: nn.Module, scope: PrunableScope, keep: Sequence[int], channel_mean: torch.Tensor) -> None:
    """Bias compensation of one scope from the mean of each consumer input channel alone, in place, before the
    cut (what a method that keeps only means needs, e.g. FLAP's re-implementation in eval/)."""
    mean = channel_mean.to(torch.float64)
    channels = ChannelStatistics(torch.tensor(1.0, dtype=torch.float64), mean, torch.zeros_like(mean))
    compensate_scope(model, scope, keep, channels, BiasCompensation())
