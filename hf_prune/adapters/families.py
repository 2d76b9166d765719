"""The model families hf-prune supports: one entry each, from which everything else is derived.

An entry names the family's ``model_type`` (transformers'), the adapter that knows its module layout, and the
few facts another runtime needs that the layout cannot tell. Derived from the entries: which checkpoints
``hf-prune`` accepts, the pruned config/model classes (:func:`hf_prune.modeling.pruned_classes`, from transformers'
own tables) and their registration with the Auto classes, the vLLM plugin's layers, and the tiny random models
every test runs on. A fifth family with the same layout is one more entry (CONTRIBUTING.md); one with another
layout is one adapter file plus its entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from ..errors import UnsupportedModelError
from ..modeling import MODEL_TYPE_PREFIX, pruned_classes
from ..registry import Registry
from .base import ModelAdapter
from .llama import LlamaLayoutAdapter


@dataclass(frozen=True)
class Family:
    """One supported family of causal LMs."""

    #: transformers' ``model_type`` of the family's dense checkpoints
    model_type: str
    #: the adapter that knows the family's module names
    layout: ModelAdapter
    #: which of vLLM's attention modules serves a layer: "llama", "mistral" (its sliding window reaches the
    #: attention through vLLM's cache config) or "qwen3" (per-head q/k norms)
    vllm_attention: str = "llama"
    #: what the tests' tiny random model of this family sets, so that the family's own code paths run
    tiny_config: Mapping[str, Any] = field(default_factory=dict)


FAMILIES: Registry[Family] = Registry("model family")


def register_family(family: Family) -> Family:
    """Support ``family``: accept its checkpoints, and register its pruned classes with transformers' Auto
    classes (``from_pretrained`` of a pruned checkpoint) and for ``trust_remote_code`` (``auto_map``)."""
    FAMILIES.register(family.model_type, family)
    config_cls, model_cls = pruned_classes(family.model_type)
    AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
    config_cls.register_for_auto_class()
    model_cls.register_for_auto_class("AutoModelForCausalLM")
    return family


LLAMA_LAYOUT = LlamaLayoutAdapter()
for _family in (
    Family("llama", LLAMA_LAYOUT, tiny_config={"attention_bias": True, "mlp_bias": True}),
    Family("mistral", LLAMA_LAYOUT, vllm_attention="mistral", tiny_config={"sliding_window": 8}),
    Family("qwen2", LLAMA_LAYOUT),
    Family("qwen3", LLAMA_LAYOUT, vllm_attention="qwen3", tiny_config={"head_dim": 16, "tie_word_embeddings": True}),
):
    register_family(_family)


def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(FAMILIES))


def check_supported(model_type: str) -> None:
    """Fail early, before any weight is loaded, for an architecture without an adapter."""
    if model_type.removeprefix(MODEL_TYPE_PREFIX) not in FAMILIES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; hf-prune has adapters for: "
            f"{', '.join(supported_model_types())} (causal LM checkpoints of these families)."
        )


def family_of(model_type: str) -> Family:
    """The family of a dense or pruned (``hf_prune_*``) ``model_type``: a pruned model can be pruned again."""
    check_supported(model_type)
    return FAMILIES[model_type.removeprefix(MODEL_TYPE_PREFIX)]


def get_adapter(model: nn.Module) -> ModelAdapter:
    return family_of(str(getattr(getattr(model, "config", None), "model_type", None))).layout
