"""Importance criteria: one small class per criterion, registered by name in :data:`hf_prune.registry.IMPORTANCES`
(a criterion is one file plus one line there)."""

from .base import (
           CHANNELS,
           GRADIENTS,
           Importance,
           consumer_column_norms,
           get_importance,
           register_importance,
           top_groups,
)

__all__ = ["CHANNELS", "GRADIENTS", "Importance", "consumer_column_norms", "get_importance", "register_importance",
           "top_groups"]
