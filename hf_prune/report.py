"""The record of one pruning run: what was kept, what it cost, how well it kept quality.

A plain record, at the bottom of the package: the cut writes it, recovery and evaluation add to it, and the
checkpoint's files, model card and Hub upload read it. Everything but the plan, the scores and the trajectory is
also stored in the pruned model's ``config.hf_prune`` (:meth:`PruningReport.to_info`), so a card can be rebuilt
from a saved checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from .version import __version__


@dataclass
class LayerSummary:
    layer: int
    kv_groups_before: int
    kv_groups_after: int
    neurons_before: int
    neurons_after: int
    #: what uniform allocation would keep at the same budget (reported beside EMP), if computed
    kv_groups_uniform: int | None = None
    neurons_uniform: int | None = None


@dataclass
class PruningReport:
    """What a run did. Everything but the plan, the scores and the trajectory also lives in the pruned
    model's ``config.hf_prune`` (:meth:`to_info`), so the model card can be rebuilt from a saved checkpoint."""

    config: dict[str, Any]
    layers: list[LayerSummary]
    params_before: int
    params_after: int
    prunable_before: int
    prunable_after: int
    allocation: dict[str, Any] = field(default_factory=dict)
    calibration_tokens: int = 0
    calibration_seconds: float = 0.0
    calibration_processes: int = 1
    plan: dict[str, list[int]] = field(repr=False, default_factory=dict)
    scores: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    #: Hyperflux: one entry per scheduler tick (density, target, pressure, loss, open groups per scope)
    trajectory: list[dict[str, Any]] = field(repr=False, default_factory=list)
    #: (name, groups) of the scopes that were pruned, in order: labels of the trajectory's "open" lists
    pruned_scopes: list[tuple[str, int]] = field(default_factory=list)
    #: whether importance scores chose the groups (not so for Hyperflux gates that started uniform)
    scored: bool = False
    #: the model that was pruned (Hub id, or a name for a local one), set by the pipeline
    base_model: str | None = None
    #: lm-eval retention table and quality gate (:mod:`hf_prune.quality.retention`), when evaluated
    quality: dict[str, Any] = field(default_factory=dict)
    #: recovery after the cut (:mod:`hf_prune.recovery`): method, perplexity before / after, cost
    recovery: dict[str, Any] = field(default_factory=dict)
    #: distillation: the trainer's log, one entry per logging or held-out step (drawn as recovery_curve.png)
    recovery_curve: list[dict[str, Any]] = field(repr=False, default_factory=list)
    #: compensation refit on the pruned model's activations (``--refit-on pruned``): tokens, layer passes, seconds
    refit: dict[str, Any] = field(default_factory=dict)
    version: str = __version__

    @property
    def achieved_sparsity(self) -> float:
        """Removed share of the prunable (attention + MLP) parameters."""
        return 1.0 - self.prunable_after / self.prunable_before

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.pop("scores")
        values.pop("trajectory")
        values.pop("recovery_curve")
        values["achieved_sparsity"] = self.achieved_sparsity
        return values

    def to_info(self) -> dict[str, Any]:
        """The report as stored in ``config.hf_prune`` of the pruned model (no plan, scores or trajectory)."""
        values = self.to_dict()
        values.pop("plan")
        values["achieved_sparsity"] = round(self.achieved_sparsity, 6)
        return values

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "PruningReport":
        """Rebuild the report of a saved pruned model from its ``config.hf_prune``."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in info.items() if key in known}
        values["layers"] = [LayerSummary(**row) for row in values.get("layers", [])]
        values["pruned_scopes"] = [tuple(pair) for pair in values.get("pruned_scopes", [])]
        return cls(**values)
