import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from hf_prune.adapters import check_supported, get_adapter, supported_model_types
from hf_prune.errors import UnsupportedModelError

from .conftest import COMMON, make_model


def test_every_decoder_layer_has_an_attention_and_an_mlp_scope(family):
    model = make_model(family)
    scopes = get_adapter(model).scopes(model)
    assert [(s.layer, s.kind) for s in scopes] == [(i, k) for i in range(3) for k in ("attention", "mlp")]
    attention = [s for s in scopes if s.kind == "attention"]
    mlp = [s for s in scopes if s.kind == "mlp"]
    assert all(s.num_groups == COMMON["num_key_value_heads"] for s in attention)
    assert all(s.num_groups == COMMON["intermediate_size"] for s in mlp)


def test_groups_own_every_attention_and_mlp_parameter(family):
    """Σ groups × params per group == all q/k/v/o and gate/up/down weights (and their row biases)."""
    model = make_model(family)
    scopes = get_adapter(model).scopes(model)
    counted = sum(s.num_groups * s.params_per_group(model) for s in scopes)
    expected = 0
    for scope in scopes:
        for piece in scope.slices:
            linear = model.get_submodule(piece.path)
            expected += linear.weight.numel()
            if linear.bias is not None and piece.dim == 0:
                expected += linear.bias.numel()
    assert counted == expected


def test_query_block_of_a_kv_group_follows_repeat_kv(family):
    """Query head h reads KV head h // n_rep, so KV group g owns n_rep consecutive query heads."""
    model = make_model(family)
    attention = next(s for s in get_adapter(model).scopes(model) if s.kind == "attention")
    q_slice = attention.producers[0]
    module = model.get_submodule(q_slice.path.rsplit(".", 1)[0])
    assert q_slice.block == module.num_key_value_groups * module.head_dim


def test_unknown_architecture_is_refused_with_the_supported_list():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedModelError, match="gpt2.*llama, mistral, qwen2, qwen3"):
        get_adapter(model)
    with pytest.raises(UnsupportedModelError):
        check_supported("bert")
    assert set(supported_model_types()) == {"llama", "mistral", "qwen2", "qwen3"}
