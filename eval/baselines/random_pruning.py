"""Random pruning at a given allocation: the floor every criterion must clear.

Given how many groups each scope keeps (taken from any other plan, e.g. uniform or EMP at the same
budget), keep that many groups chosen uniformly at random. Comparing a method with random choices
*at its own allocation* separates what its scores contribute from what its allocation contributes
(LLM-Pruner's and FLAP's papers report a random-importance row in the same spirit: LLM-Pruner's
``--pruner_type random``, ``tp.importance.RandomImportance``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from hf_prune.adapters import PrunableScope

from .common import BaselinePlan, check_kept_count


def kept_counts(kept: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """The allocation of a plan: scope name -> number of groups kept."""
    return {name: len(groups) for name, groups in kept.items()}


def random_plan(scopes: Sequence[PrunableScope], counts: Mapping[str, int], seed: int) -> BaselinePlan:
    """Keep ``counts[scope]`` random groups of every scope named in ``counts`` (seeded, reproducible)."""
    generator = torch.Generator().manual_seed(seed)
    kept = {}
    for scope in scopes:
        if scope.name in counts:
            keep = check_kept_count(scope, counts[scope.name])
            kept[scope.name] = sorted(torch.randperm(scope.num_groups, generator=generator)[:keep].tolist())
    return BaselinePlan("random", kept, details={"seed": seed})
