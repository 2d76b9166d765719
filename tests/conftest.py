"""Shared fixtures: offline mode, one parametrised fixture over every supported family (hf_prune.adapters.FAMILIES)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

import hf_prune  # noqa: F401  (registers the pruned classes)
from hf_prune.testing import TINY_SHAPES, families, make_tiny_model, random_plan

# short names for the tests
COMMON = TINY_SHAPES
make_model = make_tiny_model

__all__ = ["COMMON", "make_model", "random_plan"]


@pytest.fixture(params=families())
def family(request) -> str:
    return request.param


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.randint(0, COMMON["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1))
