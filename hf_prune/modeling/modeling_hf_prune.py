"""Config and model classes of pruned Llama / Mistral / Qwen2 / Qwen3 checkpoints.

A structurally pruned checkpoint has Linear layers whose shapes differ from layer to layer, which no
decoder config of transformers can express. Each class here is a thin subclass of the family's own
config / causal-LM class that adds one field, ``pruned_linear_shapes`` (module path ->
``[out_features, in_features, has_bias]``), and rebuilds those Linear modules in ``post_init`` —
*before* ``from_pretrained`` loads the weights (the model is still a skeleton on the meta device then),
so ``device_map="auto"``, offloading and any dtype keep working and no weight is ever loaded at the
wrong shape.

This file is copied next to the weights by ``save_pretrained`` (the classes are registered with
``register_for_auto_class``), so a user without hf_prune can load a pruned checkpoint with
``trust_remote_code=True``. It must therefore import nothing but torch and transformers.

Nothing here knows what a "head" or a "neuron" is: the adapters of hf_prune decide which slices are
cut; this file only reproduces the resulting shapes.
"""

from __future__ import annotations

from torch import nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

SHAPES_FIELD = "pruned_linear_shapes"


def resize_linear_modules(model: nn.Module, shapes: dict[str, list[int]] | None) -> None:
    """Replace each named ``nn.Linear`` by an uninitialised one of the recorded shape.

    The new modules are created on the device and dtype of the ones they replace (the meta device
    during ``from_pretrained``), so the checkpoint's tensors load straight into them.
    """
    for path, (out_features, in_features, has_bias) in (shapes or {}).items():
        parent_path, _, child_name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        old = getattr(parent, child_name)
        if not isinstance(old, nn.Linear):
            raise TypeError(f"{SHAPES_FIELD} names {path!r}, which is a {type(old).__name__}, not nn.Linear")
        if (old.out_features, old.in_features, old.bias is not None) == (out_features, in_features, bool(has_bias)):
            continue
        new = nn.Linear(
            in_features, out_features, bias=bool(has_bias), device=old.weight.device, dtype=old.weight.dtype
        )
        setattr(parent, child_name, new)


class PrunedShapesMixin:
    """Rebuild pruned Linear shapes before the parent's ``post_init`` (weight init, tying, plans)."""

    def post_init(self) -> None:
        resize_linear_modules(self, getattr(self.config, SHAPES_FIELD, None))
        super().post_init()


class PrunedLlamaConfig(LlamaConfig):
    model_type = "hf_prune_llama"
    pruned_linear_shapes: dict | None = None
    hf_prune: dict | None = None


class PrunedMistralConfig(MistralConfig):
    model_type = "hf_prune_mistral"
    pruned_linear_shapes: dict | None = None
    hf_prune: dict | None = None


class PrunedQwen2Config(Qwen2Config):
    model_type = "hf_prune_qwen2"
    pruned_linear_shapes: dict | None = None
    hf_prune: dict | None = None


class PrunedQwen3Config(Qwen3Config):
    model_type = "hf_prune_qwen3"
    pruned_linear_shapes: dict | None = None
    hf_prune: dict | None = None


class PrunedLlamaForCausalLM(PrunedShapesMixin, LlamaForCausalLM):
    config_class = PrunedLlamaConfig


class PrunedMistralForCausalLM(PrunedShapesMixin, MistralForCausalLM):
    config_class = PrunedMistralConfig


class PrunedQwen2ForCausalLM(PrunedShapesMixin, Qwen2ForCausalLM):
    config_class = PrunedQwen2Config


class PrunedQwen3ForCausalLM(PrunedShapesMixin, Qwen3ForCausalLM):
    config_class = PrunedQwen3Config


#: base model_type -> (pruned config class, pruned causal-LM class)
PRUNED_CLASSES: dict[str, tuple[type, type]] = {
    "llama": (PrunedLlamaConfig, PrunedLlamaForCausalLM),
    "mistral": (PrunedMistralConfig, PrunedMistralForCausalLM),
    "qwen2": (PrunedQwen2Config, PrunedQwen2ForCausalLM),
    "qwen3": (PrunedQwen3Config, PrunedQwen3ForCausalLM),
}
