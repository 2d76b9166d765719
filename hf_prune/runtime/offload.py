"""What hf-prune needs from accelerate's offload hooks to run a model that does not fit on one device.

With ``device_map`` offload (CPU or disk), accelerate keeps a layer's weights on ``meta`` and its hooks load
them before every forward and drop them after. The layer-by-layer passes (sequential calibration, the
search's sweep) call one layer many times in a row, so they keep it loaded for the whole block instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from accelerate.utils import has_offloaded_params
from torch import nn


def execution_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: the device of its first weight or, when accelerate offloaded that
    weight (kept on ``meta`` until a forward loads it), the device its offload hook runs it on."""
    for module in model.modules():
        if has_offloaded_params(module):
            return torch.device(module._hf_hook.execution_device)
        weight = next(module.parameters(recurse=False), None)
        if weight is not None:
            return weight.device
    return torch.device("cpu")


def has_offloaded_weights(model: nn.Module) -> bool:
    """Whether accelerate keeps some of the model's weights off the device (``device_map`` CPU/disk offload)."""
    return any(has_offloaded_params(module) for module in model.modules())


@contextmanager
def resident(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Keep the offloaded weights of ``modules`` on their execution device for the whole block.

    accelerate's offload hooks (``device_map`` with CPU or disk offload) load a module's weights before
    every forward and drop them after it; a layer called once per candidate would then be loaded once
    per candidate. Inside this block each offloaded submodule is loaded once and its hook stops
    offloading until the block ends. Modules that are not offloaded are left as they are.
    """
    offloaded = [module for root in modules for module in root.modules() if has_offloaded_params(module)]
    with ExitStack() as stack:
        if offloaded:
            stack.callback(return_freed_memory)  # runs last, once the weights are dropped
        for module in offloaded:
            hook = module._hf_hook
            hook.pre_forward(module)
            hook.offload = False
            stack.callback(_drop_weights, module, hook)
        yield


def modules_outside(model: nn.Module, layers: Sequence[nn.Module], skip: Sequence[nn.Module] = ()) -> list[nn.Module]:
    """The modules of ``model`` that hold weights of their own outside its decoder ``layers`` (embeddings, final
    norm, head), less ``skip``: what to make resident for the work done before or after the layers."""
    skipped = {id(module) for layer in layers for module in layer.modules()} | {id(module) for module in skip}
    return [module for module in model.modules()
            if id(module) not in skipped and next(module.parameters(recurse=False), None) is not None]


def _drop_weights(module: nn.Module, hook) -> None:
    hook.offload = True
    hook.post_forward(module, None)


def return_freed_memory() -> None:
    """Hand the memory of dropped weights back to the operating system.

    glibc serves allocations below its mmap threshold (which it raises up to 32 MB as large blocks are
    freed) from its heap, and keeps freed heap memory for reuse: loading and dropping one layer after
    another then leaves a process holding several layers' worth of freed tensors (measured: a 0.8 GB
    model pruned layer by layer peaked at 0.25 GB or 0.5 GB above its start, depending on the run).
    ``malloc_trim`` releases it. A no-op where the C library has no ``malloc_trim``.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
