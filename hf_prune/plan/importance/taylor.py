"""First-order Taylor importance (LLM-Pruner): |Σ_{w in group} w · ∂L/∂w|.

The first-order estimate of how much the calibration loss changes when the whole group is set to
zero. The sum is signed over the group's weights and over batches, and the absolute value is taken
last, so that opposite contributions cancel as they would in the real loss change.
"""

from __future__ import annotations

import torch
from torch import nn

from ...adapters import PrunableScope
from ...calibration.statistics import CalibrationStatistics
from .base import GRADIENTS, Importance, register_importance


@register_importance("taylor")
class TaylorImportance(Importance):
    requires = frozenset({GRADIENTS})

    def scores(self, model: nn.Module, scope: PrunableScope, stats: CalibrationStatistics | None) -> torch.Tensor:
        return stats.taylor[scope.name].abs()
