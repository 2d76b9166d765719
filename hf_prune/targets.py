"""Targets — how many groups each layer keeps — by name, with what the rest of hf-prune must know of each.

A target is one file plus one entry in ``TARGETS``. An *allocator* turns importance scores and the
budget into a count per scope (``(AllocationRequest) -> Allocation``); a *planner* decides on the model
itself (``(model, request, config, calibration_ids, held_out_ids) -> (kept, details, trajectory)``):
Hyperflux trains gates, the search measures costs. The entries are plain data and import nothing, so
``hf-prune --help`` and config validation stay free of torch; the implementation is imported on use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any


@dataclass(frozen=True)
class Target:
    name: str
    #: ``"module:function"`` inside hf_prune
    implementation: str
    #: a planner (decides on the model: needs calibration text) rather than an allocator (scores + budget)
    planner: bool = False
    #: trains gates on calibration text: resumable state, a 4/8-bit base, Ctrl-C saves the state
    learned: bool = False
    #: the PruningConfig section only this target reads (its flags are refused with any other target)
    section: str | None = None
    #: whether importance scores are computed for a config (default: always)
    uses_scores: Callable[[Any], bool] | None = None

    def load(self) -> Callable[..., Any]:
        module, _, attribute = self.implementation.partition(":")
        return getattr(import_module(module, "hf_prune"), attribute)

    def scores(self, config: Any) -> bool:
        return True if self.uses_scores is None else self.uses_scores(config)


TARGETS: dict[str, Target] = {target.name: target for target in (
    Target("uniform", ".allocation.uniform:allocate_uniform"),
    Target("emp", ".allocation.emp:allocate_emp"),
    Target("hyperflux", ".hyperflux.planner:plan_with_gates", planner=True, learned=True, section="hyperflux",
           uses_scores=lambda config: config.hyperflux.gate_init == "scores"),  # gates may start from scores
    Target("search", ".search.planner:plan_by_search", planner=True, section="search"),
)}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        from .errors import ConfigError

        raise ConfigError(f"unknown target {name!r}; choose one of: {', '.join(sorted(TARGETS))}")
    return TARGETS[name]


def register_target(target: Target) -> Target:
    """Add a target from outside the package (its ``implementation`` may then be an absolute module)."""
    if target.name in TARGETS:
        raise ValueError(f"target {target.name!r} is already registered")
    TARGETS[target.name] = target
    return target
