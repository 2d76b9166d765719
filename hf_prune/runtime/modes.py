"""The model's train / eval mode, restored whatever happens inside a block.

Calibration, the search and evaluation need eval mode (no dropout, transformers' inference paths); gate training
with gradient checkpointing needs train mode. An error inside must not leave a caller's model in the wrong mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """``model`` in train (``training=True``) or eval mode inside the block, in its own mode again after it."""
    was_training = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(was_training)


def eval_mode(model: nn.Module):
    """:func:`mode` with ``training=False``."""
    return mode(model, False)
