"""``--uniform-shapes``: a uniformly pruned model saved as its family's stock class and config.

With the same number of KV groups and MLP neurons in every layer, a pruned Llama is just a smaller
Llama: ``num_key_value_heads``, ``num_attention_heads``, ``intermediate_size`` and an explicit
``head_dim`` describe it, and any tool that reads Llama / Mistral / Qwen checkpoints (vLLM, llama.cpp's
converter, TGI, optimum) loads it without hf-prune and without remote code. Whether the stock class
really holds every tensor is checked, not assumed: its skeleton is built on the meta device from the new
config and compared name by name and shape by shape with the pruned model (a compensation bias that the
stock class has no place for is refused here, with its name).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ...adapters import get_adapter
from ...cut.relabel import config_with_class, relabel
from ...errors import ConfigError
from ...modeling import pruned_classes


def _stock_classes(model: PreTrainedModel) -> tuple[type, type]:
    """The family's own (config, causal-LM) classes: the pruned classes' parents."""
    config_cls, model_cls = pruned_classes(model.config.model_type)
    stock_model = next(base for base in model_cls.__mro__[1:] if base.__module__.startswith("transformers.models."))
    return config_cls.__mro__[1], stock_model


def as_stock_model(model: PreTrainedModel) -> PreTrainedModel:
    """Relabel a pruned model with equal counts per layer as its family's stock class, in place."""
    config_cls, model_cls = _stock_classes(model)
    config = config_with_class(model.config, config_cls, hf_prune=getattr(model.config, "hf_prune", None),
                               **get_adapter(model).stock_config_values(model))
    with torch.device("meta"):
        skeleton = model_cls(config)
    expected = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    actual = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    differences = sorted(set(expected.items()) ^ set(actual.items()))
    if differences:
        name, _ = differences[0]
        raise ConfigError(f"--uniform-shapes: a stock {config_cls.__name__} cannot hold this model ({name}: "
                          f"{actual.get(name, 'absent')} here, {expected.get(name, 'absent')} in the stock class; "
                          f"{len(differences)} difference(s)); drop --compensate or --uniform-shapes")
    return relabel(model, config, model_cls)
