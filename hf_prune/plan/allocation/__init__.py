"""Targets and the one-shot rules among them: scores + budget -> how many groups each scope keeps
(:mod:`.uniform`, :mod:`.emp`); :mod:`.base` says what every target receives and returns."""

from .base import Allocation, AllocationRequest, Target, as_target
from .emp import allocate_emp, effective_count
from .uniform import allocate_uniform

__all__ = ["Allocation", "AllocationRequest", "Target", "allocate_emp", "allocate_uniform", "as_target",
           "effective_count"]
