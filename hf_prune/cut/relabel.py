"""A sliced model becomes an instance of its family's pruned class, in place: its config records the new shapes.

The pruned class adds no parameter, buffer or forward logic — it only rebuilds these same shapes when
``from_pretrained`` constructs it — so switching the class of the live instance is exact and avoids materialising
a second copy of a large model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn
from transformers import PreTrainedModel

from ..adapters import PrunableScope
from ..modeling import REMOVED_FIELD, REPORT_FIELD, SHAPES_FIELD, RemovedSublayer, pruned_classes

#: config keys that name a class or a pruned layout, not the model's hyper-parameters
CLASS_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", SHAPES_FIELD, REMOVED_FIELD,
               REPORT_FIELD)


def linear_shapes(model: nn.Module, scopes: Iterable[PrunableScope]) -> dict[str, list[int]]:
    """``[out_features, in_features, has_bias]`` of every Linear the scopes cut."""
    shapes = {}
    for scope in scopes:
        for piece in scope.slices:
            linear = model.get_submodule(piece.path)
            shapes[piece.path] = [linear.out_features, linear.in_features, int(linear.bias is not None)]
    return shapes


def removed_sublayers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Module path -> rebuild spec of every sublayer that surgery removed whole."""
    return {path: module.spec() for path, module in model.named_modules() if isinstance(module, RemovedSublayer)}


def as_pruned_model(model: PreTrainedModel, scopes: Iterable[PrunableScope], info: dict[str, Any]) -> PreTrainedModel:
    """Relabel an already sliced model as its family's pruned class, in place. The config becomes the pruned
    config (same values, plus the per-module shapes and the pruning summary) everywhere it is referenced."""
    config_cls, model_cls = pruned_classes(model.config.model_type)
    new_config = config_with_class(model.config, config_cls, **{REPORT_FIELD: info})
    setattr(new_config, SHAPES_FIELD, linear_shapes(model, scopes))
    setattr(new_config, REMOVED_FIELD, removed_sublayers(model) or None)
    return relabel(model, new_config, model_cls)


def config_with_class(config: Any, config_cls: type, **values: Any) -> Any:
    """The same hyper-parameters as ``config`` in a config of ``config_cls`` (``values`` override them),
    with the runtime state that ``to_dict()`` leaves out (e.g. the attention implementation chosen at load)."""
    hyper = {key: value for key, value in config.to_dict().items() if key not in CLASS_KEYS}
    hyper.update(values)
    new_config = config_cls(**hyper)
    for key, value in vars(config).items():
        if key.startswith("_") and key not in hyper:
            setattr(new_config, key, value)
    return new_config


def relabel(model: PreTrainedModel, config: Any, model_cls: type) -> PreTrainedModel:
    """Give ``model`` a new config (everywhere the old one is referenced) and class, in place: no weight moves."""
    old_config = model.config
    for module in model.modules():
        if getattr(module, "config", None) is old_config:
            module.config = config
    model.__class__ = model_cls
    return model
