"""Fluctuation importance (FLAP): Σ_{j in group} Var_tokens(X_j) · ‖W_:,j‖₂².

A channel whose input barely varies across tokens can be replaced by its mean — which the bias
compensation does — so only its *fluctuation* is lost when it is removed.
"""

from __future__ import annotations

import torch
from torch import nn

from ...adapters import PrunableScope
from ...calibration.statistics import CalibrationStatistics
from .base import CHANNELS, Importance, consumer_column_norms, register_importance


@register_importance("fluctuation")
class FluctuationImportance(Importance):
    requires = frozenset({CHANNELS})

    def scores(self, model: nn.Module, scope: PrunableScope, stats: CalibrationStatistics | None) -> torch.Tensor:
        channel = stats.channels[scope.name]
        return scope.sum_per_group(channel.variance * consumer_column_norms(model, scope, power=2), scope.consumer)
