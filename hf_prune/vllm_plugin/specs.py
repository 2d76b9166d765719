"""Per-layer shapes of a pruned checkpoint, read from its config alone.

vLLM builds a model from the config before any weight is read, so the plugin must know each decoder
layer's head count, KV-head count, MLP width and biases from ``config.json``. This module turns the
pruned config (``pruned_linear_shapes``, ``pruned_removed_sublayers``) into one :class:`LayerSpec` per
layer. It does not import vLLM, so the main test suite checks it against real pruned models.

The family's facts come from its entry in :mod:`hf_prune.adapters.families` and from transformers' own classes,
never from a family name written here. What hf-prune guarantees and this module relies on: head_dim never changes, so a layer's query / KV
head counts are ``q_proj.out_features // head_dim`` / ``k_proj.out_features // head_dim``; a module
missing from ``pruned_linear_shapes`` (its sublayer was not pruned) has the dense shape and the family's
stock biases.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import torch
from transformers import CONFIG_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING

from ..adapters import Family, family_of
from ..cut.relabel import CLASS_KEYS
from ..modeling import REMOVED_FIELD, SHAPES_FIELD


@dataclass(frozen=True)
class AttentionSpec:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    qkv_bias: bool
    o_bias: bool


@dataclass(frozen=True)
class MLPSpec:
    intermediate_size: int
    gate_up_bias: bool
    down_bias: bool


@dataclass(frozen=True)
class RemovedSpec:
    """A sublayer that lost every group: it adds only its output bias (when it has one) and no KV cache."""

    has_bias: bool


@dataclass(frozen=True)
class LayerSpec:
    index: int
    attention: AttentionSpec | RemovedSpec
    mlp: MLPSpec | RemovedSpec
    sliding_window: int | None


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def family(config: Any) -> Family:
    """The family entry (:mod:`hf_prune.adapters.families`) of a pruned or dense config."""
    return family_of(str(_get(config, "model_type", "")))


def dense_biases(config: Any) -> dict[str, bool]:
    """Which projections of an unpruned layer carry a bias, as transformers' modeling file of the family builds
    them: read off one decoder layer built on the meta device (no memory) from the config's own values."""
    values = config if isinstance(config, dict) else config.to_dict()
    hyper = {key: value for key, value in values.items() if key not in CLASS_KEYS}
    return dict(_dense_biases(family(config).model_type, json.dumps(hyper, sort_keys=True, default=str)))


@functools.lru_cache(maxsize=8)
def _dense_biases(model_type: str, hyper_json: str) -> tuple[tuple[str, bool], ...]:
    config_cls = CONFIG_MAPPING[model_type]
    hyper = json.loads(hyper_json)
    one_layer = {"num_hidden_layers": 1, **({"layer_types": hyper["layer_types"][:1]} if hyper.get("layer_types") else {})}
    dense = config_cls(**{**hyper, **one_layer})
    with torch.device("meta"):
        model = MODEL_FOR_CAUSAL_LM_MAPPING[config_cls](dense)
    layout = family_of(model_type).layout
    return tuple((piece.path.rpartition(".")[2], model.get_submodule(piece.path).bias is not None)
                 for scope in layout.scopes(model) for piece in scope.slices)


def head_dim(config: Any) -> int:
    return _get(config, "head_dim") or _get(config, "hidden_size") // _get(config, "num_attention_heads")


def _linear(config: Any, path: str, dense_out: int, dense_in: int, dense_bias: bool) -> tuple[int, int, bool]:
    """(out, in, has_bias) of ``path``: the recorded pruned shape, else the dense one."""
    recorded = (_get(config, SHAPES_FIELD) or {}).get(path)
    if recorded is None:
        return dense_out, dense_in, dense_bias
    out_features, in_features, has_bias = recorded
    return int(out_features), int(in_features), bool(has_bias)


def _sliding_window(config: Any, index: int) -> int | None:
    window = _get(config, "sliding_window")
    if not window:
        return None
    layer_types = _get(config, "layer_types")
    if layer_types and layer_types[index] != "sliding_attention":
        return None
    return int(window)


def layer_spec(config: Any, index: int) -> LayerSpec:
    """The shapes and biases of decoder layer ``index`` of a (pruned or dense) config."""
    hidden = int(_get(config, "hidden_size"))
    dim = int(head_dim(config))
    heads = int(_get(config, "num_attention_heads"))
    kv_heads = int(_get(config, "num_key_value_heads") or heads)
    intermediate = int(_get(config, "intermediate_size"))
    biases = dense_biases(config)
    removed = _get(config, REMOVED_FIELD) or {}
    prefix = f"model.layers.{index}"

    if f"{prefix}.self_attn" in removed:
        attention: AttentionSpec | RemovedSpec = RemovedSpec(bool(removed[f"{prefix}.self_attn"]["has_bias"]))
    else:
        def attn(name, out, inp):
            return _linear(config, f"{prefix}.self_attn.{name}", out, inp, biases[name])

        q_out, _, q_bias = attn("q_proj", heads * dim, hidden)
        k_out, _, k_bias = attn("k_proj", kv_heads * dim, hidden)
        v_out, _, v_bias = attn("v_proj", kv_heads * dim, hidden)
        _, o_in, o_bias = attn("o_proj", hidden, heads * dim)
        if q_out % dim or k_out % dim or v_out != k_out or o_in != q_out or (q_out // dim) % (k_out // dim):
            raise ValueError(f"{prefix}.self_attn: q/k/v/o shapes {q_out}/{k_out}/{v_out}/{o_in} do not form whole "
                             f"groups of head_dim {dim}")
        if not q_bias == k_bias == v_bias:
            raise ValueError(f"{prefix}.self_attn: q/k/v biases differ ({q_bias}/{k_bias}/{v_bias}); vLLM fuses them")
        attention = AttentionSpec(q_out // dim, k_out // dim, dim, q_bias, o_bias)

    if f"{prefix}.mlp" in removed:
        mlp: MLPSpec | RemovedSpec = RemovedSpec(bool(removed[f"{prefix}.mlp"]["has_bias"]))
    else:
        def proj(name, out, inp):
            return _linear(config, f"{prefix}.mlp.{name}", out, inp, biases[name])

        gate_out, _, gate_bias = proj("gate_proj", intermediate, hidden)
        up_out, _, up_bias = proj("up_proj", intermediate, hidden)
        _, down_in, down_bias = proj("down_proj", hidden, intermediate)
        if not gate_out == up_out == down_in or gate_bias != up_bias:
            raise ValueError(f"{prefix}.mlp: gate/up/down shapes or biases disagree; vLLM fuses gate and up")
        mlp = MLPSpec(gate_out, gate_bias, down_bias)

    return LayerSpec(index, attention, mlp, _sliding_window(config, index))


def layer_specs(config: Any) -> list[LayerSpec]:
    return [layer_spec(config, index) for index in range(int(_get(config, "num_hidden_layers")))]
