"""Importance criteria, by name. Importing this package registers the built-in ones."""

from .base import IMPORTANCE_REGISTRY, Importance, get_importance, register_importance
from .magnitude import MagnitudeImportance

__all__ = ["IMPORTANCE_REGISTRY", "Importance", "MagnitudeImportance", "get_importance", "register_importance"]
