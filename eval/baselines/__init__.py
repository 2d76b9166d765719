"""Faithful re-implementations of the peers hf-prune is compared with (one file each, citing the paper
section and the code they follow). Each returns a :class:`~.common.BaselinePlan`; apply it with
:func:`~.common.materialize` (compensation, hf-prune surgery, identity for removed layers)."""

from .common import BaselinePlan, achieved_sparsity, materialize
from .flap import flap_plan
from .llm_pruner import llm_pruner_plan
from .random_pruning import kept_counts, random_plan
from .shortgpt import shortgpt_plan
from .wanda_sp import wanda_sp_plan

__all__ = ["BaselinePlan", "achieved_sparsity", "flap_plan", "kept_counts", "llm_pruner_plan", "materialize",
           "random_plan", "shortgpt_plan", "wanda_sp_plan"]
