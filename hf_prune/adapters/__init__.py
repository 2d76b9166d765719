"""Model families: the only code that knows module names (:mod:`.llama`) and which families exist (:mod:`.families`)."""

from __future__ import annotations

from .base import COLUMNS, ROWS, LinearSlice, ModelAdapter, PrunableScope, count_parameters, prunable_parameters
from .families import FAMILIES, Family, check_supported, family_of, get_adapter, register_family, supported_model_types

__all__ = [
    "COLUMNS",
    "FAMILIES",
    "ROWS",
    "Family",
    "LinearSlice",
    "ModelAdapter",
    "PrunableScope",
    "check_supported",
    "count_parameters",
    "family_of",
    "get_adapter",
    "prunable_parameters",
    "register_family",
    "supported_model_types",
]
