"""The vLLM plugin's pure-Python parts (no vLLM here; eval/vllm_check.py runs the engine in its own venv):
the entry point is declared, ``register`` is importable without vLLM, and the per-layer specs read from
a pruned config match the modules of the real pruned model, removed sublayers and compensation biases
included, on all four families."""

import ast
import json
import sys
from pathlib import Path

import pytest
import tomllib
import torch

from hf_prune import save_pruned
from hf_prune.adapters import FAMILIES, get_adapter
from hf_prune.cut.relabel import as_pruned_model
from hf_prune.cut.surgery import apply_plan, ensure_bias
from hf_prune.errors import HfPruneError
from hf_prune.modeling import RemovedSublayer, pruned_classes
from hf_prune.vllm_plugin import ARCHITECTURES, register
from hf_prune.vllm_plugin.specs import AttentionSpec, MLPSpec, RemovedSpec, head_dim, layer_specs

from .conftest import make_model, random_plan

ROOT = Path(__file__).resolve().parent.parent


def test_the_entry_point_is_declared_and_importable_without_vllm():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    target = pyproject["project"]["entry-points"]["vllm.general_plugins"]["hf_prune"]
    module, _, function = target.partition(":")
    assert (module, function) == ("hf_prune.vllm_plugin", "register")
    assert callable(register)
    assert "vllm" not in sys.modules  # importing the plugin must not import vLLM


def test_every_pruned_architecture_is_registered_lazily_to_an_existing_class():
    assert set(ARCHITECTURES) == {pruned_classes(model_type)[1].__name__ for model_type in FAMILIES}
    tree = ast.parse((ROOT / "hf_prune" / "vllm_plugin" / "model.py").read_text())
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "__getattr__" in functions, "vLLM finds every architecture's class by its name"
    for architecture, target in ARCHITECTURES.items():
        module, _, name = target.partition(":")
        assert module == "hf_prune.vllm_plugin.model" and name == architecture


def pruned_with_removed_sublayers_and_biases(family):
    """Per-layer shapes, layer 0's attention and layer 1's MLP removed, compensation biases on o_proj /
    down_proj of a removed and of a kept sublayer."""
    model = make_model(family)
    scopes = {scope.name: scope for scope in get_adapter(model).scopes(model)}
    with torch.no_grad():
        for name in ("layers.0.attention", "layers.1.mlp", "layers.2.attention", "layers.2.mlp"):
            ensure_bias(model, scopes[name].consumer.path).bias.normal_()
    plan = random_plan(model, seed=7)
    plan["layers.0.attention"] = []
    plan["layers.1.mlp"] = []
    apply_plan(model, list(scopes.values()), plan, allow_empty=True)
    return as_pruned_model(model, get_adapter(model).scopes(model), {"note": "test"})


def has_bias(module) -> bool:
    return getattr(module, "bias", None) is not None


def expected_specs(model):
    """What the plugin must build, read off the live PyTorch modules."""
    dim = head_dim(model.config)
    for layer in get_adapter(model).decoder_layers(model):
        attn, mlp = layer.self_attn, layer.mlp
        if isinstance(attn, RemovedSublayer):
            attention = RemovedSpec(has_bias(attn))
        else:
            assert has_bias(attn.q_proj) == has_bias(attn.k_proj) == has_bias(attn.v_proj)
            attention = AttentionSpec(attn.q_proj.out_features // dim, attn.k_proj.out_features // dim, dim,
                                      has_bias(attn.q_proj), has_bias(attn.o_proj))
        if isinstance(mlp, RemovedSublayer):
            feed_forward = RemovedSpec(has_bias(mlp))
        else:
            feed_forward = MLPSpec(mlp.gate_proj.out_features, has_bias(mlp.gate_proj), has_bias(mlp.down_proj))
        yield attention, feed_forward


def test_layer_specs_match_the_pruned_model(family, tmp_path):
    model = pruned_with_removed_sublayers_and_biases(family)
    expected = list(expected_specs(model))
    assert isinstance(expected[0][0], RemovedSpec) and expected[0][0].has_bias
    assert isinstance(expected[1][1], RemovedSpec) and expected[1][1].has_bias
    assert expected[2][0].o_bias and expected[2][1].down_bias
    assert len({spec[0].num_kv_heads for spec in expected if isinstance(spec[0], AttentionSpec)} |
               {spec[1].intermediate_size for spec in expected if isinstance(spec[1], MLPSpec)}) > 1

    output = save_pruned(model, None, tmp_path / "pruned")
    saved = json.loads((output / "config.json").read_text())  # what vLLM reads
    for config in (model.config, saved):
        specs = layer_specs(config)
        assert [(spec.attention, spec.mlp) for spec in specs] == expected
        window = getattr(model.config, "sliding_window", None) if family == "mistral" else None
        assert all(spec.sliding_window == window for spec in specs)


def test_a_dense_config_gives_the_stock_shapes_and_biases(family):
    config = make_model(family).config
    spec = layer_specs(config)[0]
    biases = {"llama": (True, True, True, True), "mistral": (False, False, False, False),
              "qwen2": (True, False, False, False), "qwen3": (False, False, False, False)}[family]
    assert spec.attention == AttentionSpec(config.num_attention_heads, config.num_key_value_heads,
                                           head_dim(config), *biases[:2])
    assert spec.mlp == MLPSpec(config.intermediate_size, *biases[2:])


def test_shapes_that_are_not_whole_head_groups_are_refused():
    config = pruned_with_removed_sublayers_and_biases("llama").config.to_dict()
    config["pruned_linear_shapes"]["model.layers.2.self_attn.k_proj"][0] += 1
    with pytest.raises(ValueError, match="whole groups"):
        layer_specs(config)
    config["model_type"] = "gpt2"
    with pytest.raises(HfPruneError, match="'gpt2' is not supported"):
        layer_specs(config)
