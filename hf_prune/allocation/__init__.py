"""Allocators: scores + budget -> how many groups each scope keeps. Registered by target name."""

from __future__ import annotations

from collections.abc import Callable

from .uniform import allocate_uniform

#: target name -> allocator(scopes, params_per_group, sparsity, total_prunable) -> kept count per scope
ALLOCATORS: dict[str, Callable] = {"uniform": allocate_uniform}

__all__ = ["ALLOCATORS", "allocate_uniform"]
