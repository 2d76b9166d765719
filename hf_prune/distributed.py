"""The process group of a run started with ``accelerate launch`` / ``torchrun`` (or of a plain run).

accelerate treats processes on a machine without GPUs as independent single processes unless its
state is created with ``cpu=True``; then it joins them over gloo. Every part of hf-prune asks for the
state here, so the first call decides it the same way for all.
"""

from __future__ import annotations

import torch
from accelerate import PartialState


def process_state() -> PartialState:
    return PartialState(cpu=not torch.cuda.is_available())
