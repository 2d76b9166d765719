"""Targets, registered by name. Allocators: scores + budget -> how many groups each scope keeps. Planners:
targets that decide on the model itself (Hyperflux's gates, the search's measured costs).

The modules are imported on first use (see :mod:`hf_prune.registry`), so naming the targets costs
no torch import.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ..registry import Registry

#: target name -> allocator ``(AllocationRequest) -> Allocation``
ALLOCATORS: Registry = Registry("target", __name__, {
    "uniform": ".uniform:allocate_uniform",
    "emp": ".emp:allocate_emp",
})

#: target name -> planner ``(model, request, config, calibration_ids, held_out_ids) -> (kept, details,
#: trajectory)``: targets that decide on the model itself (learned gates, measured costs), not from scores alone
PLANNERS: Registry = Registry("target", "hf_prune", {
    "hyperflux": ".hyperflux.planner:plan_with_gates",
    "search": ".search.planner:plan_by_search",
})

_EXPORTS = {"Allocation": ".base", "AllocationRequest": ".base", "allocate_emp": ".emp",
            "effective_count": ".emp", "allocate_uniform": ".uniform"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ALLOCATORS", "PLANNERS", *_EXPORTS]
