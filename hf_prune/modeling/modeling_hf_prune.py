"""Config and model classes of pruned checkpoints, one pair per model family, derived from the family's own.

A structurally pruned checkpoint has Linear layers whose shapes differ from layer to layer, which no
decoder config of transformers can express. Each class here is a thin subclass of the family's own
config / causal-LM class (``PrunedLlamaConfig`` / ``PrunedLlamaForCausalLM`` of ``LlamaConfig`` /
``LlamaForCausalLM``, model_type ``hf_prune_llama``), built on first use from transformers' own
``model_type`` tables, so no family is named here: hf-prune's adapters decide which families are supported.
It adds two fields, ``pruned_linear_shapes`` (module path ->
``[out_features, in_features, has_bias]``) and ``pruned_removed_sublayers`` (module path of an attention
or MLP sublayer that lost every group -> how to rebuild its stand-in), and rebuilds those modules in
``post_init`` —
*before* ``from_pretrained`` loads the weights (the model is still a skeleton on the meta device then),
so ``device_map="auto"``, offloading and any dtype keep working and no weight is ever loaded at the
wrong shape.

This file is copied next to the weights by ``save_pretrained`` (the classes are registered with
``register_for_auto_class``), so a user without hf_prune can load a pruned checkpoint with
``trust_remote_code=True``: transformers then asks this module for ``PrunedLlamaForCausalLM`` by name, and the
module-level ``__getattr__`` builds it. It must therefore import nothing but torch and transformers.

Nothing here knows what a "head" or a "neuron" is: the adapters of hf_prune decide which slices are
cut; this file only reproduces the resulting shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import transformers
from torch import nn
from transformers import CONFIG_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING

SHAPES_FIELD = "pruned_linear_shapes"
REMOVED_FIELD = "pruned_removed_sublayers"
REPORT_FIELD = "hf_prune"
#: model_type of a pruned checkpoint = this + its family's model_type; class names = "Pruned" + the family's
MODEL_TYPE_PREFIX = "hf_prune_"
CLASS_PREFIX = "Pruned"


class RemovedSublayer(nn.Module):
    """Stands in for an attention or MLP sublayer whose every group was pruned.

    What such a sublayer adds to the residual stream is its output projection's bias (zero when it has
    none, as in Llama; a compensated bias when FLAP-style compensation folded the removed channels' mean
    into it), so that is exactly what this module returns: the masked model (all groups zeroed) and the
    cut model stay identical.
    """

    def __init__(self, hidden_size: int, has_bias: bool, device=None, dtype=None):
        super().__init__()
        self.hidden_size = hidden_size
        self.bias = nn.Parameter(torch.zeros(hidden_size, device=device, dtype=dtype)) if has_bias else None

    def residual_update(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.zeros_like(hidden_states)
        return self.bias.to(hidden_states.dtype).expand_as(hidden_states).clone()

    def spec(self) -> dict:
        """What ``post_init`` needs to rebuild this module from the config."""
        return {"kind": self.kind, "hidden_size": self.hidden_size, "has_bias": self.bias is not None}


class RemovedMLP(RemovedSublayer):
    kind = "mlp"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.residual_update(hidden_states)


class RemovedAttention(RemovedSublayer):
    """A removed attention sublayer that still advances the KV cache.

    A cache reports its length from layer 0 (``get_seq_length``), and generation positions every new token
    from it, so even a layer without attention must record that tokens went by. It stores one key and
    value of width 1 per token (zeros): the smallest entry every cache class counts.
    """

    kind = "attention"

    def __init__(self, hidden_size: int, has_bias: bool, layer_idx: int, device=None, dtype=None):
        super().__init__(hidden_size, has_bias, device=device, dtype=dtype)
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args, cache=None, past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            batch, length = hidden_states.shape[:2]
            placeholder = hidden_states.new_zeros(batch, 1, length, 1)
            cache.update(placeholder, placeholder, self.layer_idx)
        return self.residual_update(hidden_states), None

    def spec(self) -> dict:
        return {**super().spec(), "layer_idx": self.layer_idx}


def removed_sublayer(spec: dict, device=None, dtype=None) -> RemovedSublayer:
    """The stand-in module that ``spec`` (from :meth:`RemovedSublayer.spec`) describes."""
    if spec["kind"] == "attention":
        return RemovedAttention(spec["hidden_size"], spec["has_bias"], spec["layer_idx"], device=device, dtype=dtype)
    if spec["kind"] == "mlp":
        return RemovedMLP(spec["hidden_size"], spec["has_bias"], device=device, dtype=dtype)
    raise ValueError(f"unknown removed sublayer kind {spec['kind']!r}")


def replace_removed_sublayers(model: nn.Module, removed: dict[str, dict] | None) -> None:
    """Put a stand-in at each recorded path, on the device and dtype of the model's other weights there."""
    for path, spec in (removed or {}).items():
        parent_path, _, child_name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        reference = next(getattr(parent, child_name).parameters(), None)
        device, dtype = (reference.device, reference.dtype) if reference is not None else (None, None)
        setattr(parent, child_name, removed_sublayer(spec, device=device, dtype=dtype))


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
    """Rebuild pruned shapes and removed sublayers before the parent's ``post_init`` (init, tying, plans)."""

    def post_init(self) -> None:
        replace_removed_sublayers(self, getattr(self.config, REMOVED_FIELD, None))
        resize_linear_modules(self, getattr(self.config, SHAPES_FIELD, None))
        super().post_init()

    def push_to_hub(self, repo_id: str, *args, **kwargs):
        """With hf_prune installed and imported, upload what ``hf-prune --push-to-hub`` uploads (checkpoint,
        tokenizer — ``tokenizer=`` or the source model's —, this modeling file, hf-prune's model card); without
        it, transformers' own ``push_to_hub``."""
        if _push_handler is None:
            return super().push_to_hub(repo_id, *args, **kwargs)
        if args:
            raise TypeError("push_to_hub of a pruned model takes repo_id and keyword arguments only")
        return _push_handler(self, repo_id, **kwargs)


#: what ``push_to_hub`` of a pruned model calls instead of transformers' upload; hf_prune sets it when imported
#: (this file may not import hf_prune: it is also loaded as remote code where hf_prune is not installed)
_push_handler: Callable[..., str] | None = None


def set_push_handler(handler: Callable[..., str] | None) -> None:
    global _push_handler
    _push_handler = handler


_CLASSES: dict[str, tuple[type, type]] = {}


def pruned_classes(model_type: str) -> tuple[type, type]:
    """The (config, causal-LM) classes of pruned checkpoints of the family whose dense or pruned ``model_type``
    this is, subclasses of the family's own two classes; built once, and made attributes of this module (where
    ``save_pretrained`` and remote code look them up by name)."""
    family = model_type.removeprefix(MODEL_TYPE_PREFIX)
    if family not in _CLASSES:
        config_base = CONFIG_MAPPING[family]
        model_base = MODEL_FOR_CAUSAL_LM_MAPPING[config_base]
        fields = (SHAPES_FIELD, REMOVED_FIELD, REPORT_FIELD)
        config_cls = _subclass(config_base, {
            "model_type": MODEL_TYPE_PREFIX + family,
            "__annotations__": dict.fromkeys(fields, "dict | None"),  # configs are dataclasses: fields are declared
            **dict.fromkeys(fields),
        })
        model_cls = _subclass(model_base, {"config_class": config_cls}, mixin=PrunedShapesMixin)
        _CLASSES[family] = (config_cls, model_cls)
    return _CLASSES[family]


def _subclass(base: type, namespace: dict[str, Any], mixin: type | None = None) -> type:
    name = CLASS_PREFIX + base.__name__
    cls = type(name, (*((mixin,) if mixin else ()), base), {"__module__": __name__, "__qualname__": name, **namespace})
    globals()[name] = cls
    return cls


def __getattr__(name: str) -> type:
    """``PrunedLlamaForCausalLM``, ``PrunedQwen3Config``, ...: the pruned class of the transformers class named
    after the prefix (how ``trust_remote_code`` and ``save_pretrained``'s ``auto_map`` find them)."""
    base = getattr(transformers, name.removeprefix(CLASS_PREFIX), None) if name.startswith(CLASS_PREFIX) else None
    model_type = getattr(base, "model_type", None) or getattr(getattr(base, "config_class", None), "model_type", None)
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        pruned_classes(model_type)
        if name in globals():
            return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
