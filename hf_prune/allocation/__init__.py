"""Allocators: scores + budget -> how many groups each scope keeps (the one-shot targets of
:mod:`hf_prune.targets`). Names are imported on first use, so importing the package costs no torch."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {"Allocation": ".base", "AllocationRequest": ".base", "allocate_emp": ".emp",
            "effective_count": ".emp", "allocate_uniform": ".uniform"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*_EXPORTS]
