"""Importance criteria, by name.

A criterion is one file plus one line in ``IMPORTANCE_REGISTRY`` below. The modules are imported
on first use (see :mod:`hf_prune.registry`), so naming the criteria costs no torch import.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ..registry import Registry

IMPORTANCE_REGISTRY: Registry = Registry("importance", __name__, {
    "magnitude": ".magnitude:MagnitudeImportance",
    "activation": ".activation:ActivationImportance",
    "fluctuation": ".fluctuation:FluctuationImportance",
    "taylor": ".taylor:TaylorImportance",
})

_EXPORTS = {
    "CHANNELS": ".base", "GRADIENTS": ".base", "Importance": ".base", "get_importance": ".base",
    "register_importance": ".base", "ActivationImportance": ".activation",
    "FluctuationImportance": ".fluctuation", "MagnitudeImportance": ".magnitude", "TaylorImportance": ".taylor",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["IMPORTANCE_REGISTRY", *_EXPORTS]
