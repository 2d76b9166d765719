"""Calibration statistics per group, accumulated in float64 and summed across processes.

Two kinds, each collected only when a criterion (or compensation) asks for it:

- *channel statistics* at the input of every scope's consumer (``o_proj`` / ``down_proj``): token
  count, per-channel sum and sum of squares. From these come ‖X_j‖₂ (Wanda-sp), the variance of the
  channel across tokens (FLAP's fluctuation) and its mean (bias compensation).
- *first-order Taylor sums*: Σ w·∂L/∂w over each group's weights, signed, accumulated over batches
  (the gradient of the total calibration loss is the sum of the batches' gradients, so the absolute
  value is taken only at the end, as LLM-Pruner does).

Batches are split across the processes of an ``accelerate launch`` run and every sum is reduced with
``accelerate``'s ``reduce``, so N processes give the single-process numbers (float64, up to summation
order). ``sequential=True`` runs the forward one decoder layer at a time, keeping only that layer's
activations: with the weights offloaded by ``device_map`` (accelerate moves each layer to the GPU when
it runs), this is the way a model too large for one GPU is still scored on one GPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import reduce
from torch import nn
from tqdm.auto import tqdm

from ..adapters import PrunableScope
from ..runtime.distributed import process_state, shard_for_this_process
from ..runtime.offload import execution_device, resident
from ..runtime.spilled import SpilledRows, SpillFile

logger = logging.getLogger(__name__)


@dataclass
class ChannelStatistics:
    """Per input channel of a consumer: running sums over calibration tokens (float64)."""

    count: torch.Tensor  # scalar, number of tokens
    total: torch.Tensor  # [channels] Σ x
    total_sq: torch.Tensor  # [channels] Σ x²
    #: [channels, channels] Σ x xᵀ, only when least-squares compensation needs it (channels² float64s); in a file
    #: once gathered, when the run holds memory to one layer (:meth:`spill_second_moments`)
    gram: torch.Tensor | SpilledRows | None = None
    #: when the refit's target is another stream's output (``--refit-on asymmetric``: the dense model's input y of
    #: the same consumer on the same tokens): [channels, channels] Σ x yᵀ, with ``gram``
    cross: torch.Tensor | SpilledRows | None = None
    #: and [channels] Σ y
    target_total: torch.Tensor | None = None

    @classmethod
    def zeros(cls, channels: int, gram: bool = False, target: bool = False) -> "ChannelStatistics":
        zero = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        return cls(zero(()), zero(channels), zero(channels), zero(channels, channels) if gram else None,
                   zero(channels, channels) if target and gram else None, zero(channels) if target else None)

    def update(self, hidden: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """Add the tokens of ``hidden`` (and, for statistics with a target, the other stream's ``target`` input on
        the same tokens)."""
        flat = hidden.detach().reshape(-1, hidden.shape[-1]).to(torch.float64)
        self.count += flat.shape[0]
        self.total += flat.sum(dim=0).cpu()
        self.total_sq += flat.pow(2).sum(dim=0).cpu()
        if self.gram is not None:
            _add_product(self.gram, flat, flat)
        if self.target_total is not None:
            if target is None:
                raise ValueError("these statistics pair every input with the target stream's: give the target")
            other = target.detach().reshape(-1, target.shape[-1]).to(torch.float64)
            self.target_total += other.sum(dim=0).cpu()
            if self.cross is not None:
                _add_product(self.cross, flat, other)

    def spill_second_moments(self) -> None:
        """Move the finished d×d sums to a file of their own (read back by rows; gone with these statistics).

        Least squares reads only the kept rows of them, and OBS works on a copy it writes over: in a file they leave
        their memory to that work (one layer's moments and one working matrix, not two d×d matrices at once)."""
        spill = SpillFile()
        self.gram = spill.spill(self.gram) if isinstance(self.gram, torch.Tensor) else self.gram
        self.cross = spill.spill(self.cross) if isinstance(self.cross, torch.Tensor) else self.cross

    @property
    def target_mean(self) -> torch.Tensor:
        """Mean of the refit's target input: the other stream's when there is one, else this one's."""
        return (self.target_total if self.target_total is not None else self.total) / self.count

    @property
    def norm(self) -> torch.Tensor:
        """‖X_j‖₂ over all calibration tokens."""
        return self.total_sq.sqrt()

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased variance across tokens (FLAP's fluctuation of the channel)."""
        centered = self.total_sq - self.total.pow(2) / self.count
        return (centered / (self.count - 1)).clamp_min(0.0)


def _add_product(total: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """``total += leftᵀ right``: in place on the CPU (no d×d temporary beside a d×d sum); on an accelerator the
    product is formed there and moved."""
    if left.device.type == "cpu":
        total.addmm_(left.T, right)
    else:
        total += (left.T @ right).cpu()


@dataclass
class CalibrationStatistics:
    channels: dict[str, ChannelStatistics] = field(default_factory=dict)
    taylor: dict[str, torch.Tensor] = field(default_factory=dict)  # signed Σ w·∂L/∂w per group
    tokens: int = 0
    seconds: float = 0.0
    processes: int = 1  # how many processes shared the calibration rows
    #: measurements a planner derived from this same dense model (e.g. the search's first table of costs, which
    #: does not depend on the budget), kept so that pruning at several budgets measures them once
    derived: dict[Any, Any] = field(default_factory=dict, repr=False)

    def reduce_across_processes(self) -> None:
        """Sum every statistic over the processes of a distributed run (no-op with one process)."""
        state = process_state()
        self.processes = state.num_processes
        if state.num_processes == 1:
            return
        device = state.device
        for stats in self.channels.values():
            for name in ("count", "total", "total_sq", "gram", "cross", "target_total"):
                if getattr(stats, name) is not None:
                    setattr(stats, name, reduce(getattr(stats, name).to(device), reduction="sum").cpu())
        for name, value in self.taylor.items():
            self.taylor[name] = reduce(value.to(device), reduction="sum").cpu()
        tokens = reduce(torch.tensor(float(self.tokens), dtype=torch.float64, device=device), reduction="sum")
        self.tokens = int(tokens.item())


def record_channels(model: nn.Module, scopes: Sequence[PrunableScope], stats: CalibrationStatistics,
                     gram: bool = False) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that add every scope consumer's input to ``stats.channels`` (created on first use), until removed."""
    handles = []
    for scope in scopes:
        consumer = model.get_submodule(scope.consumer.path)
        channel_stats = stats.channels.setdefault(scope.name, ChannelStatistics.zeros(consumer.in_features, gram))
        handles.append(consumer.register_forward_pre_hook(lambda module, args, s=channel_stats: s.update(args[0])))
    return handles


@torch.no_grad()
def collect_channel_statistics(
    model: nn.Module,
    scopes: Sequence[PrunableScope],
    input_ids: torch.Tensor,
    *,
    batch_size: int = 1,
    sequential: bool = False,
    layers: nn.ModuleList | None = None,
    stats: CalibrationStatistics | None = None,
    gram: bool = False,
) -> CalibrationStatistics:
    """Channel statistics of every scope over this process's share of ``input_ids``; with ``gram`` also
    each consumer input's second-moment matrix (for least-squares compensation)."""
    stats = stats or CalibrationStatistics()
    started = time.perf_counter()
    mine = shard_for_this_process(input_ids)
    batches = list(mine.split(batch_size))
    handles = record_channels(model, scopes, stats, gram)
    try:
        if sequential:
            if layers is None:
                raise ValueError("sequential calibration needs the decoder layers (from the adapter)")
            _sequential_forward(model, layers, batches)
        else:
            device = execution_device(model)
            for batch in tqdm(batches, desc="calibration", unit="batch", leave=False):
                model(batch.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    stats.tokens += mine.numel()
    stats.seconds += time.perf_counter() - started
    return stats


class _StopForward(Exception):
    """Raised by the capture hook once the first decoder layer's inputs are recorded."""


def first_layer_inputs(model: nn.Module, layers: nn.ModuleList,
                       batches: Iterable[torch.Tensor]) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) with which the model calls its first decoder layer, one entry per batch: the
    hidden states plus the position embeddings and masks, so that layers can then run one at a time.

    A pre-hook records them and stops the forward there, so nothing past the embeddings is computed.
    """
    captured: list[tuple[tuple, dict]] = []

    def capture(module, args, kwargs):
        captured.append((args, kwargs))
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    device = execution_device(model)
    try:
        for batch in batches:
            try:
                model(batch.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def _sequential_forward(model: nn.Module, layers: nn.ModuleList, batches: Iterable[torch.Tensor]) -> None:
    """Run ``batches`` through the decoder layers one layer at a time.

    Each layer in turn processes every batch and its outputs become the next layer's inputs, so hooks
    on the layers' Linear modules see exactly the activations of a full forward.
    """
    captured = first_layer_inputs(model, layers, batches)
    for layer in tqdm(layers, desc="calibration (layer by layer)", unit="layer", leave=False):
        next_inputs = []
        with resident([layer]):  # an offloaded layer is loaded once for all batches
            for args, kwargs in captured:
                output = layer(*args, **kwargs)
                hidden = output[0] if isinstance(output, tuple) else output
                next_inputs.append(((hidden, *args[1:]), kwargs))
        captured = next_inputs


def collect_taylor_statistics(
    model: nn.Module,
    scopes: Sequence[PrunableScope],
    input_ids: torch.Tensor,
    *,
    batch_size: int = 1,
    stats: CalibrationStatistics | None = None,
) -> CalibrationStatistics:
    """Signed Σ w·∂L/∂w per group, with L the causal-LM loss on this process's calibration rows."""
    stats = stats or CalibrationStatistics()
    started = time.perf_counter()
    mine = shard_for_this_process(input_ids)
    device = execution_device(model)
    weights = {piece.path: model.get_submodule(piece.path).weight for scope in scopes for piece in scope.slices}
    flags = {path: weight.requires_grad for path, weight in weights.items()}
    other = [p for p in model.parameters() if all(p is not w for w in weights.values())]
    other_flags = [p.requires_grad for p in other]
    for p in other:
        p.requires_grad_(False)  # gradients only where they are read: saves memory on large models
    for weight in weights.values():
        weight.requires_grad_(True)
        weight.grad = None
    try:
        with torch.enable_grad():
            for batch in tqdm(list(mine.split(batch_size)), desc="calibration (gradients)", unit="batch", leave=False):
                batch = batch.to(device)
                loss = model(batch, labels=batch, use_cache=False).loss
                loss.backward()
                _accumulate_taylor(model, scopes, stats)
                for weight in weights.values():
                    weight.grad = None
    finally:
        for path, weight in weights.items():
            weight.requires_grad_(flags[path])
        for p, flag in zip(other, other_flags):
            p.requires_grad_(flag)
    stats.tokens += mine.numel()
    stats.seconds += time.perf_counter() - started
    return stats


def _accumulate_taylor(model: nn.Module, scopes: Sequence[PrunableScope], stats: CalibrationStatistics) -> None:
    for scope in scopes:
        total = stats.taylor.setdefault(scope.name, torch.zeros(scope.num_groups, dtype=torch.float64))
        for piece in scope.slices:
            weight = model.get_submodule(piece.path).weight
            product = (weight.detach().to(torch.float64) * weight.grad.to(torch.float64)).sum(dim=1 - piece.dim)
            total += scope.sum_per_group(product, piece).cpu()


__all__ = [
    "CalibrationStatistics",
    "ChannelStatistics",
    "collect_channel_statistics",
    "collect_taylor_statistics",
    "first_layer_inputs",
    "record_channels",
]
