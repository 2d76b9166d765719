"""Recovery after the cut, by name (``--recover``).

A method is one file plus one line in ``RECOVERY_METHODS`` below: a function
``(model, train_ids, eval_ids, options) -> RecoveryResult`` that trains on the cut model and leaves a
plain model (no adapter modules) behind. The modules are imported on first use (see
:mod:`hf_prune.registry`), so naming the methods costs no torch import.
"""

from __future__ import annotations

from ..registry import Registry

RECOVERY_METHODS: Registry = Registry("recovery", __name__, {
    "lora": ".lora:recover_with_lora",
})

__all__ = ["RECOVERY_METHODS"]
