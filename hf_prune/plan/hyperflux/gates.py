"""Learnable structured gates: one logit per KV group and per MLP neuron.

The forward pass multiplies each group's output (the consumer's input, through the same hooks as
:mod:`hf_prune.cut.masks`) by the *hard* gate H(m) = 1[m >= 0]; the backward pass is straight-through
(dH/dm := 1), so a gate's gradient is the loss's response to scaling its group — the group's *flux*.
The base weights stay frozen: only these logits train, so memory is inference plus a few vectors,
and a quantized base works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ...adapters import PrunableScope
from ...cut.masks import GroupMasks


def hard_gate(logits: torch.Tensor) -> torch.Tensor:
    """1[m >= 0] in the forward pass, identity gradient in the backward pass."""
    hard = (logits >= 0).to(logits.dtype)
    return hard + logits - logits.detach()


class GateSet(nn.Module):
    """The gate logits of a set of scopes, with their parameter costs for the pressure term."""

    def __init__(self, scopes: Sequence[PrunableScope], params_per_group: Mapping[str, int]):
        super().__init__()
        self.scopes = list(scopes)
        self.logits = nn.ParameterDict(
            {self.key(s): nn.Parameter(torch.zeros(s.num_groups, dtype=torch.float32)) for s in self.scopes}
        )
        costs = {self.key(s): torch.full((s.num_groups,), float(params_per_group[s.name])) for s in self.scopes}
        self.total_cost = float(sum(c.sum() for c in costs.values()))
        for key, cost in costs.items():
            self.register_buffer(f"cost_{key}", cost, persistent=False)

    @staticmethod
    def key(scope: PrunableScope) -> str:
        return scope.name.replace(".", "_")  # ParameterDict keys cannot contain dots

    def cost(self, scope: PrunableScope) -> torch.Tensor:
        return getattr(self, f"cost_{self.key(scope)}")

    # -- initialisation -------------------------------------------------------------------
    def init_uniform(self, low: float = 0.2, high: float = 0.5, generator: torch.Generator | None = None) -> None:
        """The paper's init: U(low, high), every gate open."""
        with torch.no_grad():
            for scope in self.scopes:
                values = torch.rand(scope.num_groups, generator=generator, dtype=torch.float64)
                self.logits[self.key(scope)].copy_(low + (high - low) * values)

    def init_from_scores(self, scores: Mapping[str, torch.Tensor], low: float = 0.05, high: float = 0.5) -> None:
        """Open gates ordered by importance: within each scope, rank r of n maps to low + (high-low)·r/(n-1),
        so the least important groups sit closest to the threshold and close first under pressure."""
        with torch.no_grad():
            for scope in self.scopes:
                ranks = torch.argsort(torch.argsort(scores[scope.name], stable=True)).to(torch.float64)
                span = max(scope.num_groups - 1, 1)
                self.logits[self.key(scope)].copy_(low + (high - low) * ranks / span)

    # -- forward --------------------------------------------------------------------------
    def masks(self, model: nn.Module) -> GroupMasks:
        """Hooks that apply the hard gates with their straight-through gradient."""
        sources = {s.name: (lambda key=self.key(s): hard_gate(self.logits[key])) for s in self.scopes}
        return GroupMasks(model, self.scopes, sources)

    def pressure_term(self) -> torch.Tensor:
        """Σ_g P_g · m_g / Σ_g P_g: the pressure pushes every logit down in proportion to the parameters
        its group would free, so the target is a parameter budget."""
        total = sum((self.cost(s) * self.logits[self.key(s)]).sum() for s in self.scopes)
        return total / self.total_cost

    # -- readings -------------------------------------------------------------------------
    @torch.no_grad()
    def density(self) -> float:
        """Share of the gated parameters whose gate is open."""
        kept = sum(float((self.cost(s) * (self.logits[self.key(s)] >= 0)).sum()) for s in self.scopes)
        return kept / self.total_cost

    @torch.no_grad()
    def open_counts(self) -> dict[str, int]:
        return {s.name: int((self.logits[self.key(s)] >= 0).sum()) for s in self.scopes}

    def logits_by_scope(self) -> dict[str, torch.Tensor]:
        return {s.name: self.logits[self.key(s)].detach().clone() for s in self.scopes}
