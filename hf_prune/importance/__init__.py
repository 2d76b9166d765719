"""Importance criteria, by name. Importing this package registers the built-in ones."""

from .activation import ActivationImportance
from .base import CHANNELS, GRADIENTS, IMPORTANCE_REGISTRY, Importance, get_importance, register_importance
from .fluctuation import FluctuationImportance
from .magnitude import MagnitudeImportance
from .taylor import TaylorImportance

__all__ = [
    "CHANNELS",
    "GRADIENTS",
    "IMPORTANCE_REGISTRY",
    "ActivationImportance",
    "FluctuationImportance",
    "Importance",
    "MagnitudeImportance",
    "TaylorImportance",
    "get_importance",
    "register_importance",
]
