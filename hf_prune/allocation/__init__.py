"""Allocators: scores + budget -> how many groups each scope keeps. Registered by target name."""

from __future__ import annotations

from collections.abc import Callable

from .base import Allocation, AllocationRequest
from .emp import allocate_emp, effective_count
from .uniform import allocate_uniform

#: target name -> allocator
ALLOCATORS: dict[str, Callable[[AllocationRequest], Allocation]] = {
    "uniform": allocate_uniform,
    "emp": allocate_emp,
}

__all__ = ["ALLOCATORS", "Allocation", "AllocationRequest", "allocate_emp", "allocate_uniform", "effective_count"]
