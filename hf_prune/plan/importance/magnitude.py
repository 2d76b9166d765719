"""Magnitude importance: the L2 norm of all weights a group owns (its rows and its columns).

Data-free, so it needs no calibration; weak on its own but the baseline every paper reports.
"""

from __future__ import annotations

import torch
from torch import nn

from ...adapters import PrunableScope
from ...calibration.statistics import CalibrationStatistics
from .base import Importance, register_importance


@register_importance("magnitude")
class MagnitudeImportance(Importance):
    def scores(self, model: nn.Module, scope: PrunableScope, stats: CalibrationStatistics | None) -> torch.Tensor:
        squared = torch.zeros(scope.num_groups, dtype=torch.float64)
        for piece in scope.slices:
            weight = model.get_submodule(piece.path).weight.detach()
            per_index = weight.to(torch.float64).pow(2).sum(dim=1 - piece.dim)  # one value per row (ROWS) or column
            squared += scope.sum_per_group(per_index, piece).cpu()
        return squared.sqrt()
