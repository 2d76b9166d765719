"""Activation importance (Wanda-sp): Σ_{j in group} ‖X_j‖₂ · ‖W_:,j‖₂ at the consumer's input.

A channel matters when both the signal through it and the weights reading it are large; taken at
``o_proj`` / ``down_proj`` input, it measures what each head / neuron actually contributes to the
residual stream on real text.
"""

from __future__ import annotations

import torch
from torch import nn

from ...adapters import PrunableScope
from ...calibration.statistics import CalibrationStatistics
from .base import CHANNELS, Importance, consumer_column_norms, register_importance


@register_importance("activation")
class ActivationImportance(Importance):
    requires = frozenset({CHANNELS})

    def scores(self, model: nn.Module, scope: PrunableScope, stats: CalibrationStatistics | None) -> torch.Tensor:
        channel = stats.channels[scope.name]
        return scope.sum_per_group(channel.norm * consumer_column_norms(model, scope), scope.consumer)
