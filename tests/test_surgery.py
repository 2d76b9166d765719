"""The core equivalence: masking groups and physically removing them give the same model."""

import pytest
import torch

from hf_prune.adapters import get_adapter
from hf_prune.cut.masks import GroupMasks, keep_masks
from hf_prune.cut.surgery import apply_plan, block_indices, prune_scope
from hf_prune.errors import BudgetError

from .conftest import make_model, random_plan

TOLERANCE = 1e-4


def masked_logits(model, plan, input_ids):
    scopes = get_adapter(model).scopes(model)
    with torch.no_grad(), GroupMasks(model, scopes, keep_masks(scopes, plan)):
        return model(input_ids).logits


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_sliced_model_equals_masked_model(family, attn_implementation, input_ids):
    model = make_model(family, attn_implementation)
    plan = random_plan(model)
    dense = model(input_ids).logits.detach()
    expected = masked_logits(model, plan, input_ids)
    assert (expected - dense).abs().max() > 1e-2, "the plan must actually change the model"
    params_before = sum(p.numel() for p in model.parameters())

    apply_plan(model, get_adapter(model).scopes(model), plan)
    with torch.no_grad():
        sliced = model(input_ids).logits
    assert (sliced - expected).abs().max().item() <= TOLERANCE
    assert sum(p.numel() for p in model.parameters()) < params_before
    kept = {s.name: s.num_groups for s in get_adapter(model).scopes(model)}
    assert kept == {name: len(groups) for name, groups in plan.items()}


def test_generate_with_kv_cache_after_surgery_matches_masked_model(family, input_ids):
    model = make_model(family)
    plan = random_plan(model, seed=3)
    scopes = get_adapter(model).scopes(model)
    prompt = input_ids[:1, :6]
    with torch.no_grad(), GroupMasks(model, scopes, keep_masks(scopes, plan)):
        expected = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
    apply_plan(model, scopes, plan)
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
        uncached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert cached.shape == (1, 18)
    assert torch.equal(cached, expected)
    assert torch.equal(cached, uncached)


def test_removing_every_group_of_a_scope_is_refused():
    model = make_model("llama")
    scope = get_adapter(model).scopes(model)[0]
    with pytest.raises(BudgetError, match="at least one"):
        prune_scope(model, scope, [])


def test_block_indices():
    assert block_indices([0, 2], 3).tolist() == [0, 1, 2, 6, 7, 8]


def test_biases_follow_their_rows():
    model = make_model("qwen2")  # q/k/v have biases
    scope = get_adapter(model).scopes(model)[0]
    k_path = scope.producers[1].path
    bias_before = model.get_submodule(k_path).bias.detach().clone()
    head_dim = scope.producers[1].block
    prune_scope(model, scope, [1, 3])
    expected = torch.cat([bias_before[head_dim:2 * head_dim], bias_before[3 * head_dim:4 * head_dim]])
    assert torch.equal(model.get_submodule(k_path).bias.detach(), expected)
