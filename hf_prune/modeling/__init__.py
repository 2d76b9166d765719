"""Registration of the pruned config/model classes with transformers' Auto classes.

Two reload paths, both through transformers' public extension points (no patching):
1. ``AutoConfig.register`` / ``AutoModelForCausalLM.register``: once ``hf_prune`` is imported,
   ``AutoModelForCausalLM.from_pretrained(pruned_dir)`` builds the pruned shapes.
2. ``register_for_auto_class``: ``save_pretrained`` copies ``modeling_hf_prune.py`` beside the weights
   and writes ``auto_map``, so users without hf_prune load with ``trust_remote_code=True``.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM

from .modeling_hf_prune import PRUNED_CLASSES, REMOVED_FIELD, SHAPES_FIELD, RemovedSublayer, resize_linear_modules


def _register() -> None:
    for config_cls, model_cls in PRUNED_CLASSES.values():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
        config_cls.register_for_auto_class()
        model_cls.register_for_auto_class("AutoModelForCausalLM")


def pruned_classes_for(model_type: str) -> tuple[type, type]:
    """The pruned (config, model) classes of a base or already-pruned ``model_type``."""
    for base_type, classes in PRUNED_CLASSES.items():
        if model_type in (base_type, classes[0].model_type):
            return classes
    raise KeyError(model_type)


_register()

__all__ = ["PRUNED_CLASSES", "REMOVED_FIELD", "SHAPES_FIELD", "RemovedSublayer", "pruned_classes_for",
           "resize_linear_modules"]
