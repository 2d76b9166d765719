"""The process group of a run started with ``accelerate launch`` / ``torchrun`` (or of a plain run), and the
few collective steps hf-prune takes in it.

accelerate treats processes on a machine without GPUs as independent single processes unless its
state is created with ``cpu=True``; then it joins them over gloo. Every part of hf-prune asks for the
state here, so the first call decides it the same way for all.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from accelerate import PartialState
from accelerate.utils import reduce


def process_state() -> PartialState:
    return PartialState(cpu=not torch.cuda.is_available())


def shard_for_this_process(rows: torch.Tensor) -> torch.Tensor:
    """This process's rows of a batch of rows (all of them with one process)."""
    state = process_state()
    if state.num_processes == 1:
        return rows
    with state.split_between_processes(rows) as mine:
        return mine


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over the processes, so every process takes the same step."""
    if process_state().num_processes == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            parameter.grad.copy_(reduce(parameter.grad, reduction="mean"))


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set in any process (all processes must call this at the same point)."""
    if process_state().num_processes == 1:
        return flag
    return bool(reduce(torch.tensor([float(flag)], device=device), reduction="sum").item() > 0)
