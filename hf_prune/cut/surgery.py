"""Physically remove groups: slice Linear rows/columns by a plan. Nothing here is model-specific.

A plan maps a scope name to the sorted indices of the groups to *keep*. Each Linear that a scope
cuts is replaced by a smaller ``nn.Linear`` holding the kept slices (biases follow their rows; a
consumer's bias is kept whole, since it is added after the sum over the removed inputs). A scope that
keeps nothing, where that is allowed, loses its whole sublayer: a stand-in that adds only the
consumer's bias takes its place (no zero-width Linear: attention cannot reshape zero heads).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import ROWS, LinearSlice, PrunableScope
from ..errors import BudgetError
from ..modeling import RemovedSublayer, removed_sublayer


def block_indices(groups: Sequence[int], block: int, device: torch.device | None = None) -> torch.Tensor:
    """Row/column indices of ``groups`` when group ``g`` owns ``[g * block, (g + 1) * block)``."""
    groups_t = torch.as_tensor(list(groups), dtype=torch.long, device=device)
    return (groups_t[:, None] * block + torch.arange(block, device=device)).reshape(-1)


def slice_linear(linear: nn.Linear, dim: int, index: torch.Tensor) -> nn.Linear:
    """A new Linear that keeps ``index`` along ``dim`` (ROWS = outputs, COLUMNS = inputs)."""
    weight = linear.weight.detach()
    index = index.to(weight.device)
    new_weight = weight.index_select(dim, index)
    out_features, in_features = new_weight.shape
    bias = linear.bias
    new = nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(new_weight)
        if bias is not None:
            new.bias.copy_(bias.detach().index_select(0, index) if dim == ROWS else bias.detach())
    new.requires_grad_(linear.weight.requires_grad)
    return new


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_path), child, module)


def prune_scope(model: nn.Module, scope: PrunableScope, keep: Sequence[int], *, allow_empty: bool = False) -> None:
    """Keep only the groups ``keep`` of ``scope`` in every Linear the scope cuts.

    An empty ``keep`` removes the whole sublayer, only with ``allow_empty`` (a plan from a target that
    chose it); otherwise it is refused as the mistake it usually is.
    """
    keep = sorted(set(int(g) for g in keep))
    if not keep:
        if not allow_empty:
            raise BudgetError(f"{scope.name}: refusing to remove every {scope.unit}; a layer must keep at least one")
        _replace(model, scope.sublayer, removed_sublayer_for(model, scope))
        return
    if keep[0] < 0 or keep[-1] >= scope.num_groups:
        raise IndexError(f"{scope.name}: group index out of range 0..{scope.num_groups - 1}: {keep}")
    if len(keep) == scope.num_groups:
        return
    piece: LinearSlice
    for piece in scope.slices:
        linear = model.get_submodule(piece.path)
        _replace(model, piece.path, slice_linear(linear, piece.dim, block_indices(keep, piece.block)))


def removed_sublayer_for(model: nn.Module, scope: PrunableScope) -> RemovedSublayer:
    """The stand-in for ``scope``'s sublayer once every group is gone: it keeps the consumer's bias."""
    consumer = model.get_submodule(scope.consumer.path)
    weight, bias = consumer.weight, consumer.bias
    spec = {"kind": scope.kind, "hidden_size": consumer.out_features, "has_bias": bias is not None}
    if scope.kind == "attention":  # it still records tokens in the KV cache, at its layer's index
        spec["layer_idx"] = getattr(model.get_submodule(scope.sublayer), "layer_idx", scope.layer)
    stand_in = removed_sublayer(spec, device=weight.device, dtype=weight.dtype)
    if bias is not None:
        with torch.no_grad():
            stand_in.bias.copy_(bias.detach())
    return stand_in


def apply_plan(model: nn.Module, scopes: Iterable[PrunableScope], plan: Mapping[str, Sequence[int]],
               *, allow_empty: bool = False) -> None:
    """Apply a whole plan (scope name -> kept groups); scopes not in the plan stay as they are."""
    scopes = [scope for scope in scopes if scope.name in plan]
    for scope in tqdm(scopes, desc="surgery", unit="scope", leave=False):
        prune_scope(model, scope, plan[scope.name], allow_empty=allow_empty)


def ensure_bias(model: nn.Module, path: str) -> nn.Linear:
    """The Linear at ``path``, replaced by an identical one with a zero bias if it had none.

    Compensation needs a bias on ``o_proj`` / ``down_proj``, which Llama-family layers lack; the
    checkpoint records ``has_bias`` per module, so such a model still saves and reloads.
    """
    linear = model.get_submodule(path)
    if linear.bias is not None:
        return linear
    weight = linear.weight
    # built on meta and given the same weight: no randomly initialised consumer-sized matrix, no copy (8B down_proj:
    # 235 MB in float32, the largest allocation of a layer-wise cut after OBS's)
    new = nn.Linear(linear.in_features, linear.out_features, bias=True, device="meta", dtype=weight.dtype)
    new.weight = weight
    new.bias = nn.Parameter(torch.zeros(linear.out_features, device=weight.device, dtype=weight.dtype),
                            requires_grad=weight.requires_grad)
    _replace(model, path, new)
    return new
