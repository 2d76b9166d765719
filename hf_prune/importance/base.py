"""Importance criteria: a criterion maps one scope to one non-negative float64 score per group.

Each criterion is a small class registered by name, so the CLI and configs choose it with a string
(``--importance magnitude``) and new criteria plug in without touching the pruner.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from ..adapters import PrunableScope

IMPORTANCE_REGISTRY: dict[str, type["Importance"]] = {}


def register_importance(name: str):
    """Class decorator: make a criterion available under ``name``; duplicates are refused."""

    def decorator(cls: type[Importance]) -> type[Importance]:
        if name in IMPORTANCE_REGISTRY:
            raise ValueError(f"importance {name!r} is already registered by {IMPORTANCE_REGISTRY[name].__name__}")
        if not issubclass(cls, Importance):
            raise TypeError(f"{cls.__name__} must subclass Importance")
        cls.name = name
        IMPORTANCE_REGISTRY[name] = cls
        return cls

    return decorator


class Importance(ABC):
    name: str = ""
    #: whether scores need calibration data passed through the model first
    needs_calibration: bool = False

    @abstractmethod
    def scores(self, model: nn.Module, scope: PrunableScope) -> torch.Tensor:
        """Scores of the groups of ``scope``: shape ``[num_groups]``, float64, >= 0."""

    def __call__(self, model: nn.Module, scope: PrunableScope) -> torch.Tensor:
        scores = self.scores(model, scope).to(torch.float64)
        if scores.shape != (scope.num_groups,):
            raise RuntimeError(f"{self.name}: expected {scope.num_groups} scores for {scope.name}, got {tuple(scores.shape)}")
        if not torch.isfinite(scores).all() or (scores < 0).any():
            raise RuntimeError(f"{self.name}: scores of {scope.name} must be finite and non-negative")
        return scores


def get_importance(name: str) -> Importance:
    try:
        return IMPORTANCE_REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown importance {name!r}; available: {', '.join(sorted(IMPORTANCE_REGISTRY))}") from None
