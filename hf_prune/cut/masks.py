"""Zero whole groups without changing any shape.

A mask is one value per group of a scope, multiplied into the *input* of the scope's consumer
(``o_proj`` / ``down_proj``) by a forward pre-hook. With 0/1 values this is exactly the model that
surgery will produce (the equivalence every adapter is tested for); with values that carry a
gradient (Hyperflux gates) the same hook trains them. Masks never touch the weights, so they can be
taken off again and work on quantized or offloaded bases alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager

import torch
from torch import nn

from ..adapters import PrunableScope

MaskSource = torch.Tensor | Callable[[], torch.Tensor]


class GroupMasks(AbstractContextManager):
    """Multiply each scope's consumer input by its per-group mask while active.

    ``masks`` maps a scope name to a tensor of shape ``[num_groups]`` or to a callable returning one
    (evaluated at every forward, so learned gates stay live). Scopes without an entry are untouched.
    Use as a context manager, or call :meth:`attach` / :meth:`remove`.
    """

    def __init__(self, model: nn.Module, scopes: Iterable[PrunableScope], masks: Mapping[str, MaskSource]):
        self.model = model
        self.scopes = {scope.name: scope for scope in scopes}
        unknown = set(masks) - set(self.scopes)
        if unknown:
            raise KeyError(f"masks name unknown scopes: {sorted(unknown)}")
        self.masks = dict(masks)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self) -> "GroupMasks":
        for name, source in self.masks.items():
            scope = self.scopes[name]
            consumer = self.model.get_submodule(scope.consumer.path)
            self._check_size(scope, source)
            self._handles.append(consumer.register_forward_pre_hook(self._hook(source, scope.consumer.block)))
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "GroupMasks":
        return self.attach()

    def __exit__(self, *exc_info) -> None:
        self.remove()

    @staticmethod
    def _check_size(scope: PrunableScope, source: MaskSource) -> None:
        if isinstance(source, torch.Tensor) and source.shape != (scope.num_groups,):
            raise ValueError(f"mask of {scope.name} has shape {tuple(source.shape)}, expected ({scope.num_groups},)")

    @staticmethod
    def _hook(source: MaskSource, block: int):
        def pre_hook(module: nn.Module, args: tuple) -> tuple:
            hidden, *rest = args
            mask = source() if callable(source) else source
            scale = mask.to(device=hidden.device, dtype=hidden.dtype).repeat_interleave(block)
            return (hidden * scale, *rest)

        return pre_hook


def keep_masks(scopes: Iterable[PrunableScope], kept: Mapping[str, Iterable[int]]) -> dict[str, torch.Tensor]:
    """0/1 masks that keep exactly the listed groups of each scope named in ``kept``."""
    by_name = {scope.name: scope for scope in scopes}
    masks = {}
    for name, indices in kept.items():
        mask = torch.zeros(by_name[name].num_groups)
        mask[list(indices)] = 1.0
        masks[name] = mask
    return masks
