"""Importance criteria: a criterion maps one scope to one non-negative float64 score per group.

Each criterion is a small class registered by name (:data:`hf_prune.registry.IMPORTANCES`), so the CLI and
configs choose it with a string (``--importance activation``) and new criteria plug in without touching the
planner. A criterion
declares which calibration statistics it reads (``requires``); the pruner collects exactly those.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from ...adapters import PrunableScope
from ...calibration.statistics import CalibrationStatistics
from ...registry import IMPORTANCES
from ...runtime.offload import resident

CHANNELS, GRADIENTS = "channels", "gradients"


def register_importance(name: str):
    """Class decorator: make a criterion available under ``name``; duplicates are refused."""

    def decorator(cls: type[Importance]) -> type[Importance]:
        if not issubclass(cls, Importance):
            raise TypeError(f"{cls.__name__} must subclass Importance")
        cls.name = name
        return IMPORTANCES.register(name, cls)

    return decorator


class Importance(ABC):
    name: str = ""
    #: calibration statistics the criterion reads: CHANNELS and/or GRADIENTS; empty = data-free
    requires: frozenset[str] = frozenset()

    @abstractmethod
    def scores(self, model: nn.Module, scope: PrunableScope, stats: CalibrationStatistics | None) -> torch.Tensor:
        """Scores of the groups of ``scope``: shape ``[num_groups]``, float64, >= 0."""

    def __call__(
        self, model: nn.Module, scope: PrunableScope, stats: CalibrationStatistics | None = None
    ) -> torch.Tensor:
        if self.requires and stats is None:
            raise ValueError(f"importance {self.name!r} needs calibration statistics")
        weights = [model.get_submodule(piece.path) for piece in (*scope.producers, scope.consumer)]
        with resident(weights):  # criteria read weights; an offloaded model keeps them on meta until loaded
            scores = self.scores(model, scope, stats).to(torch.float64)
        if scores.shape != (scope.num_groups,):
            raise RuntimeError(f"{self.name}: expected {scope.num_groups} scores for {scope.name}, got {tuple(scores.shape)}")
        if not torch.isfinite(scores).all() or (scores < 0).any():
            raise RuntimeError(f"{self.name}: scores of {scope.name} must be finite and non-negative")
        return scores


def consumer_column_norms(model: nn.Module, scope: PrunableScope, power: int = 1) -> torch.Tensor:
    """‖W_:,j‖₂ (or its square) of every input column j of the scope's consumer, float64."""
    weight = model.get_submodule(scope.consumer.path).weight.detach().to(torch.float64)
    squared = weight.pow(2).sum(dim=0).cpu()
    return squared if power == 2 else squared.sqrt()


def get_importance(name: str) -> Importance:
    return IMPORTANCES.require(name)()


def top_groups(scores: torch.Tensor, keep: int) -> list[int]:
    """Indices of the ``keep`` highest scores, ascending. Ties go to the lower index (stable sort),
    so a plan is reproducible."""
    order = torch.sort(scores, descending=True, stable=True).indices[:keep]
    return sorted(order.tolist())
