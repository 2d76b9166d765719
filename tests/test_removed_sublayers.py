"""A scope that keeps no group loses its whole sublayer: masks ≡ surgery ≡ reload (both paths), generation
with a KV cache (dynamic and static) after the cut, a compensated bias kept, and a pruned model that is
pruned again, on all four families."""

import json

import torch
from transformers import AutoModelForCausalLM

from hf_prune import save_pruned
from hf_prune.adapters import get_adapter
from hf_prune.cut.masks import GroupMasks, keep_masks
from hf_prune.cut.relabel import as_pruned_model
from hf_prune.cut.surgery import apply_plan, ensure_bias
from hf_prune.modeling import RemovedSublayer

from ._subprocess import run_without_hf_prune
from .conftest import make_model, random_plan

TOLERANCE = 1e-4


def plan_with_removed_sublayers(model) -> dict[str, list[int]]:
    """A random plan in which layer 0 loses its attention and layer 1 its MLP (layer 0's attention is the
    one a cache reads its length from)."""
    plan = random_plan(model, seed=7)
    plan["layers.0.attention"] = []
    plan["layers.1.mlp"] = []
    return plan


def masked(model, plan, function):
    scopes = get_adapter(model).scopes(model)
    with torch.no_grad(), GroupMasks(model, scopes, keep_masks(scopes, plan)):
        return function(model)


def cut(model, plan):
    apply_plan(model, get_adapter(model).scopes(model), plan, allow_empty=True)
    as_pruned_model(model, get_adapter(model).scopes(model), {"note": "test"})
    return model


def test_removing_a_whole_sublayer_equals_masking_it(family, input_ids):
    model = make_model(family, "sdpa")
    plan = plan_with_removed_sublayers(model)
    expected = masked(model, plan, lambda m: m(input_ids).logits)
    prompt = input_ids[:1, :6]
    expected_tokens = masked(model, plan, lambda m: m.generate(prompt, max_new_tokens=10, do_sample=False))
    cut(model, plan)
    layers = get_adapter(model).decoder_layers(model)
    assert isinstance(layers[0].self_attn, RemovedSublayer) and isinstance(layers[1].mlp, RemovedSublayer)
    names = {scope.name for scope in get_adapter(model).scopes(model)}
    assert "layers.0.attention" not in names and "layers.1.mlp" not in names and "layers.0.mlp" in names
    with torch.no_grad():
        assert (model(input_ids).logits - expected).abs().max().item() <= TOLERANCE
        for cache in ("dynamic", "static"):
            tokens = model.generate(prompt, max_new_tokens=10, do_sample=False, cache_implementation=cache)
            assert torch.equal(tokens, expected_tokens), cache
        assert torch.equal(model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=False), expected_tokens)


def test_a_removed_sublayer_reloads_both_ways(family, tmp_path, input_ids):
    model = cut(make_model(family, "sdpa"), plan_with_removed_sublayers(make_model(family)))
    with torch.no_grad():
        logits = model(input_ids).logits
        tokens = model.generate(input_ids[:1, :5], max_new_tokens=6, do_sample=False)
    output = save_pruned(model, None, tmp_path / "pruned")
    config = json.loads((output / "config.json").read_text())
    assert config["pruned_removed_sublayers"]["model.layers.0.self_attn"]["kind"] == "attention"
    assert config["pruned_removed_sublayers"]["model.layers.1.mlp"]["kind"] == "mlp"

    reloaded = AutoModelForCausalLM.from_pretrained(output).eval()
    assert isinstance(get_adapter(reloaded).decoder_layers(reloaded)[0].self_attn, RemovedSublayer)
    assert {n: p.shape for n, p in reloaded.state_dict().items()} == {n: p.shape for n, p in model.state_dict().items()}
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids).logits, logits)
        assert torch.equal(reloaded.generate(input_ids[:1, :5], max_new_tokens=6, do_sample=False), tokens)

    _, out = run_without_hf_prune(output, input_ids, tmp_path)
    assert torch.equal(out["logits"], logits) and torch.equal(out["tokens"], tokens)


def test_a_removed_sublayer_keeps_its_output_bias(input_ids):
    """With a (compensated) bias on the consumer, the sublayer's contribution is that bias, as under masks."""
    model = make_model("llama")
    scope = get_adapter(model).scopes(model)[1]  # layers.0.mlp
    with torch.no_grad():
        ensure_bias(model, scope.consumer.path).bias.normal_()
    plan = {scope.name: []}
    expected = masked(model, plan, lambda m: m(input_ids).logits)
    cut(model, plan)
    stand_in = get_adapter(model).decoder_layers(model)[0].mlp
    assert stand_in.bias is not None
    with torch.no_grad():
        assert (model(input_ids).logits - expected).abs().max().item() <= TOLERANCE


def test_a_model_with_removed_sublayers_can_be_pruned_again(input_ids):
    model = cut(make_model("qwen3"), plan_with_removed_sublayers(make_model("qwen3")))
    scopes = get_adapter(model).scopes(model)
    plan = {scope.name: list(range(max(1, scope.num_groups // 2))) for scope in scopes}
    expected = masked(model, plan, lambda m: m(input_ids).logits)
    apply_plan(model, scopes, plan)
    with torch.no_grad():
        assert (model(input_ids).logits - expected).abs().max().item() <= TOLERANCE
