"""EMP: the N_eff formula on hand-made scores, the raw β rule, β bisection to a budget, rounding."""

import math

import pytest
import torch

from hf_prune.adapters import COLUMNS, ROWS, LinearSlice, PrunableScope
from hf_prune.errors import BudgetError
from hf_prune.plan.allocation import AllocationRequest, allocate_emp, effective_count
from hf_prune.plan.allocation.emp import round_to_budget


def scope(layer: int, kind: str, groups: int) -> PrunableScope:
    return PrunableScope(layer, kind, groups, (LinearSlice(f"l{layer}.{kind}.in", ROWS, 1),),
                         LinearSlice(f"l{layer}.{kind}.out", COLUMNS, 1), "neuron" if kind == "mlp" else "kv_group")


def request(scores: dict, params: dict, sparsity=None, beta=None, mlp_multiple=1, kinds=None) -> AllocationRequest:
    kinds = kinds or {}
    scopes = [scope(i, kinds.get(name, "mlp"), len(s)) for i, (name, s) in enumerate(scores.items())]
    renamed = {sc.name: torch.as_tensor(s, dtype=torch.float64) for sc, s in zip(scopes, scores.values())}
    per_group = {sc.name: params[name] for sc, name in zip(scopes, scores)}
    total = sum(sc.num_groups * per_group[sc.name] for sc in scopes)
    return AllocationRequest(scopes, per_group, total, sparsity, renamed, beta, mlp_multiple)


def test_uniform_scores_have_n_eff_n_and_keep_all_at_beta_one():
    assert effective_count(torch.ones(16)) == pytest.approx(16)
    result = allocate_emp(request({"a": [3.0] * 16}, {"a": 10}, beta=1.0))
    assert list(result.kept.values()) == [16]


def test_one_hot_scores_keep_one():
    scores = torch.zeros(32)
    scores[7] = 5.0
    assert effective_count(scores) == pytest.approx(1.0)
    result = allocate_emp(request({"a": scores.tolist()}, {"a": 10}, beta=1.0))
    assert list(result.kept.values()) == [1]


def test_n_eff_over_n_is_one_over_one_plus_cv_squared():
    scores = torch.rand(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) ** 3
    cv = scores.std(unbiased=False) / scores.mean()
    assert effective_count(scores) / 1000 == pytest.approx(float(1 / (1 + cv**2)), rel=1e-12)


def test_n_eff_is_scale_invariant_and_computed_in_float64():
    scores = torch.rand(4096, generator=torch.Generator().manual_seed(1))
    assert effective_count(scores * 1e-6) == pytest.approx(effective_count(scores), rel=1e-9)
    # bf16 would visibly move N_eff: the function must not be fooled by the input dtype
    assert effective_count(scores.to(torch.bfloat16)) != pytest.approx(effective_count(scores), rel=1e-6)


def test_raw_rule_keeps_floor_beta_n_eff_at_least_one():
    scores = {"a": [1.0, 1.0, 1.0, 1.0], "b": [1.0, 0.0, 0.0, 0.0]}
    result = allocate_emp(request(scores, {"a": 1, "b": 1}, beta=0.6))
    assert result.kept == {"layers.0.mlp": math.floor(0.6 * 4), "layers.1.mlp": 1}


@pytest.mark.parametrize("sparsity", [0.2, 0.35, 0.5])
def test_bisection_hits_the_budget_within_one_group(sparsity):
    generator = torch.Generator().manual_seed(2)
    scores = {f"s{i}": (torch.rand(64, generator=generator, dtype=torch.float64) ** (1 + i)).tolist() for i in range(6)}
    params = {name: 10 + 7 * i for i, name in enumerate(scores)}
    req = request(scores, params, sparsity=sparsity)
    result = allocate_emp(req)
    kept_params = sum(result.kept[s.name] * req.params_per_group[s.name] for s in req.scopes)
    removed = 1 - kept_params / req.total_prunable
    largest_group = max(params.values())
    assert removed >= sparsity - 1e-12
    assert (removed - sparsity) * req.total_prunable <= largest_group
    assert result.details["beta_solved"] and result.details["beta"] > 0
    # the shape is EMP's: a scope with more concentrated scores (smaller N_eff) keeps fewer groups
    n_eff = [effective_count(torch.tensor(v)) for v in scores.values()]
    kept = [result.kept[s.name] for s in req.scopes]
    assert sorted(range(6), key=lambda i: n_eff[i]) == sorted(range(6), key=lambda i: (kept[i], n_eff[i]))


def test_whole_kv_groups_and_mlp_multiple_rounding():
    generator = torch.Generator().manual_seed(3)
    scores = {
        "attn": torch.rand(8, generator=generator, dtype=torch.float64).tolist(),
        "mlp": torch.rand(300, generator=generator, dtype=torch.float64).tolist(),
    }
    req = request(scores, {"attn": 400, "mlp": 3}, sparsity=0.3, mlp_multiple=64, kinds={"attn": "attention"})
    kept = allocate_emp(req).kept
    assert kept["layers.1.mlp"] % 64 == 0 or kept["layers.1.mlp"] == 300
    assert 1 <= kept["layers.0.attention"] <= 8


def test_every_scope_keeps_at_least_one_group():
    scores = {"a": [1.0] + [0.0] * 15, "b": [1.0] * 16}
    result = allocate_emp(request(scores, {"a": 1, "b": 1}, sparsity=0.9))
    assert min(result.kept.values()) >= 1


def test_impossible_budget_is_a_budget_error():
    with pytest.raises(BudgetError, match="less than one group per layer"):
        allocate_emp(request({"a": [1.0, 1.0], "b": [1.0, 1.0]}, {"a": 1, "b": 1}, sparsity=0.8))


def test_rounding_gives_leftovers_by_largest_residual_and_never_exceeds_the_budget():
    req = request({"a": [1.0] * 10, "b": [1.0] * 10}, {"a": 7, "b": 3}, sparsity=0.5)
    # floors 4 and 5 cost 43 of 66; steps then go b (residual .9), a (.6), b, a, b: 6*7 + 8*3 = 66
    kept = round_to_budget(req, {"layers.0.mlp": 4.6, "layers.1.mlp": 5.9}, budget=66.0)
    assert kept == {"layers.0.mlp": 6, "layers.1.mlp": 8}
    kept = round_to_budget(req, {"layers.0.mlp": 4.6, "layers.1.mlp": 5.9}, budget=50.0)
    # 43 + 3 (b, residual .9) = 46; a's step (7) no longer fits, b's (3) does: 49, then nothing fits
    assert kept == {"layers.0.mlp": 4, "layers.1.mlp": 7}
