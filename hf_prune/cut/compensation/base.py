"""Compensation: change the consumer so its output misses the removed channels as little as possible.

When groups are cut, the consumer (``o_proj`` / ``down_proj``) loses input columns. A compensation method
(one file plus one registration in :data:`hf_prune.registry.COMPENSATIONS`) says, from the consumer's dense
weight and the calibration statistics of its input, what its kept columns and its bias become:
:mod:`.bias` (FLAP) folds the removed columns' mean into the bias; :mod:`.lstsq` refits the kept columns and
the bias by least squares; :mod:`.obs` also chooses which groups go, within the plan's counts
(:func:`choose_groups`). Each is applied two ways: in place before surgery (:func:`compensate`), and
temporarily while the search measures what a candidate costs (:class:`TemporaryCompensation`), so the search
chooses widths for the model it will write.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager

import torch
from torch import nn

from ...adapters import PrunableScope
from ...calibration.statistics import CalibrationStatistics, ChannelStatistics
from ..surgery import block_indices, ensure_bias


class Compensation(ABC):
    """One way to refit a consumer whose input lost some columns."""

    #: whether it reads the second moments Σ x xᵀ of the consumer's input (a d×d float64 matrix per consumer)
    second_moments: bool = False

    @abstractmethod
    def refit(self, weight: torch.Tensor, kept: torch.Tensor, removed: torch.Tensor,
              channels: ChannelStatistics, derived: dict | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """For the dense ``weight`` ``[out, in]`` and the ``kept`` / ``removed`` input column indices (on the
        weight's device): (new values of the kept columns ``[out, k]``, or None when they stay, and the bias shift
        ``[out]``), both float64.

        ``derived``, when given, is the method's to keep what it computes from ``weight`` and ``channels`` alone
        between calls: the search refits one consumer, with the same weight and statistics, for every candidate
        width of its scope."""

    def choose(self, weight: torch.Tensor, block: int, keep: Sequence[int],
               channels: ChannelStatistics, derived: dict | None = None) -> list[int]:
        """Which groups (of ``block`` consecutive input columns of ``weight``) to keep, as many as ``keep`` holds.
        The plan's choice (``keep``) unless the method has a better one of its own (:mod:`.obs`). ``derived`` as in
        :meth:`refit`: given when the search asks for every width of one scope."""
        return sorted(set(int(g) for g in keep))


def _columns(scope: PrunableScope, kept_groups: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    kept = sorted(set(int(g) for g in kept_groups))
    removed = sorted(set(range(scope.num_groups)) - set(kept))
    block = scope.consumer.block
    return block_indices(kept, block, device=device), block_indices(removed, block, device=device)


def choose_groups(model: nn.Module, plan: dict[str, list[int]], scopes: Sequence[PrunableScope],
                  stats: CalibrationStatistics, compensation: Compensation) -> None:
    """Let ``compensation`` choose which groups each of ``scopes`` keeps, at the plan's count, and write its choice
    into ``plan`` (what the cut then removes, and what the report records)."""
    for scope in scopes:
        if scope.name in plan and len(set(plan[scope.name])) < scope.num_groups:
            weight = model.get_submodule(scope.consumer.path).weight
            plan[scope.name] = compensation.choose(weight, scope.consumer.block, plan[scope.name],
                                                   stats.channels[scope.name])


@torch.no_grad()
def compensate(model: nn.Module, scopes: Sequence[PrunableScope], plan: Mapping[str, Sequence[int]],
               stats: CalibrationStatistics, compensation: Compensation) -> None:
    """Compensate every scope of ``plan`` in place, before surgery cuts it (a scope that keeps every group is
    left as it is)."""
    for scope in scopes:
        if scope.name in plan:
            compensate_scope(model, scope, plan[scope.name], stats.channels[scope.name], compensation)


@torch.no_grad()
def compensate_scope(model: nn.Module, scope: PrunableScope, keep: Sequence[int], channels: ChannelStatistics,
                     compensation: Compensation) -> None:
    """Compensate one scope in place for keeping the groups ``keep`` (nothing when it keeps them all)."""
    if len(set(keep)) == scope.num_groups:
        return
    consumer = ensure_bias(model, scope.consumer.path)
    kept, removed = _columns(scope, keep, consumer.weight.device)
    new_columns, shift = compensation.refit(consumer.weight, kept, removed, channels)
    if new_columns is not None:
        consumer.weight[:, kept] = new_columns.to(device=consumer.weight.device, dtype=consumer.weight.dtype)
    consumer.bias.add_(shift.to(device=consumer.bias.device, dtype=consumer.bias.dtype))


#: whether the search measures each candidate with the groups the method itself would keep at its count (OBS's
#: greedy choice, read off one removal order per scope) rather than the importance criterion's; the cut makes the
#: method's choice either way. Measured on the validation split (``python eval/bench_search_choice.py``, SmolLM2, the
#: recipe's search, seed 0; eval/results/search_choice_smollm2.md): perplexity ratio in-domain 1.172 → 1.174 at 20%,
#: 1.461 → 1.423 at 35%, 2.102 → 1.982 at 50%; on a source calibration never saw 2.457 → 2.152 at 20%, 4.307 → 4.462
#: at 35% (worse), 6.795 → 6.376 at 50%
SEARCH_MEASURES_CHOICE = True


class TemporaryCompensation(AbstractContextManager):
    """Compensation applied in place for a plan that is still only masks, and undone on exit.

    The search measures what each candidate costs *after* compensation: ``set(scope, mask)`` gives the
    scope's consumer the compensated weights for that 0/1 group mask, computed from its dense weights
    (kept here on first change), and an output hook adds the bias shift, so no module is replaced and
    the masks' hooks stay where they are. An all-ones mask restores the dense consumer.

    The statistics are read from ``stats`` when ``set`` is called, so a caller that walks the layers may put one
    layer's there, use them, and :meth:`release` the layer's scopes before the next (the weights of an offloaded
    layer exist only while it is resident).

    What the method derives from a consumer's dense weight and statistics (OBS's removal order, least squares'
    moments @ Wᵀ: :meth:`Compensation.refit`'s ``derived``) is kept while candidates of the same scope are
    measured, the base restored between them included, and forgotten once another scope is set: a search
    measures a scope's candidates one after another, so each scope derives once per visit, and memory holds one
    scope's (Llama-3.1-8B's down_proj: 0.47 GB of moments @ Wᵀ), not every scope's.
    """

    def __init__(self, model: nn.Module, scopes: Sequence[PrunableScope], stats: CalibrationStatistics,
                 compensation: Compensation):
        self.model, self.stats, self.compensation = model, stats, compensation
        self.scopes = {scope.name: scope for scope in scopes}
        self._dense: dict[str, torch.Tensor] = {}
        self._shift: dict[str, torch.Tensor] = {}
        self._derived: dict[str, dict] = {}  # per scope: what the method keeps between refits (Compensation.refit)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "TemporaryCompensation":
        for name, scope in self.scopes.items():
            consumer = self.model.get_submodule(scope.consumer.path)
            self._handles.append(consumer.register_forward_hook(
                lambda module, args, output, name=name: output + self._shift[name] if name in self._shift else output))
        return self

    @torch.no_grad()
    def set(self, scope: PrunableScope, mask: torch.Tensor) -> torch.Tensor | None:
        """Compensate ``scope`` for keeping ``mask``'s count of groups. Returns the 0/1 mask of the groups it keeps:
        the method's own choice at that count where it makes one (:meth:`Compensation.choose`; the caller masks
        those), else ``mask``'s; None when it keeps them all."""
        consumer = self.model.get_submodule(scope.consumer.path)
        kept_groups = torch.nonzero(mask.cpu() > 0).flatten().tolist()
        if len(kept_groups) == scope.num_groups:
            self._restore_dense(scope)  # what was derived stays: the next candidate of this scope reads it
            return None
        for other in [name for name in self._derived if name != scope.name]:
            del self._derived[other]
        if scope.name not in self._dense:
            self._dense[scope.name] = consumer.weight.detach().clone()
        dense = self._dense[scope.name]
        channels = self.stats.channels[scope.name]
        derived = self._derived.setdefault(scope.name, {})
        if derived.get("channels") is not channels:  # new statistics: nothing derived from the old ones holds
            derived.clear()
            derived["channels"] = channels
        if SEARCH_MEASURES_CHOICE:
            kept_groups = self.compensation.choose(dense, scope.consumer.block, kept_groups, channels, derived)
        kept, removed = _columns(scope, kept_groups, dense.device)
        new_columns, shift = self.compensation.refit(dense, kept, removed, channels, derived)
        consumer.weight.copy_(dense)  # written in place: a consumer-sized copy is 235 MB on Llama-3.1-8B
        if new_columns is not None:
            consumer.weight[:, kept] = new_columns.to(device=dense.device, dtype=dense.dtype)
        self._shift[scope.name] = shift.to(device=dense.device, dtype=dense.dtype)
        chosen = torch.zeros_like(mask)
        chosen[kept_groups] = 1.0
        return chosen

    @torch.no_grad()
    def release(self, scope: PrunableScope) -> None:
        """Give ``scope``'s consumer back its dense weights and forget them and all derived from them."""
        self._derived.pop(scope.name, None)
        self._restore_dense(scope)

    def _restore_dense(self, scope: PrunableScope) -> None:
        """``scope``'s consumer back to its dense weights, no bias shift (nothing when it has them)."""
        dense = self._dense.pop(scope.name, None)
        if dense is not None:
            self.model.get_submodule(scope.consumer.path).weight.copy_(dense)
        self._shift.pop(scope.name, None)

    def __exit__(self, *exc_info) -> None:
        for scope in [self.scopes[name] for name in list(self._dense)]:
            self.release(scope)
        self._derived.clear()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._shift.clear()
