"""eval/baselines/: the peers' plans on tiny random models.

Checked against direct computations written from the peers' code (not from our implementation):
FLAP's standardisation and global AL-AM threshold, ShortGPT's Block Influence, Wanda-sp's sequential
statistics, LLM-Pruner's element-wise Taylor; and for every method: a valid plan, the budget met
within one group per scope, and a cut model equal to the masked one.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from hf_prune.adapters import get_adapter, prunable_parameters
from hf_prune.calibration.statistics import collect_channel_statistics
from hf_prune.cut.masks import GroupMasks, keep_masks
from hf_prune.plan.importance import top_groups
from hf_prune.testing import make_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "eval"))
from baselines import common, flap, llm_pruner, random_pruning, shortgpt, wanda_sp  # noqa: E402

SPARSITIES = (0.2, 0.35, 0.5)


@pytest.fixture(scope="module")
def model():
    torch.set_grad_enabled(True)
    return make_tiny_model("llama", attention_bias=False, mlp_bias=False, num_hidden_layers=4)


@pytest.fixture(scope="module")
def scopes(model):
    return get_adapter(model).scopes(model)


@pytest.fixture(scope="module")
def layers(model):
    return get_adapter(model).decoder_layers(model)


@pytest.fixture(scope="module")
def calibration():
    return torch.randint(0, 256, (6, 16), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def stats(model, scopes, calibration):
    return collect_channel_statistics(model, scopes, calibration, batch_size=2)


def consumer_inputs(model, scopes, ids):
    """Every consumer's input over ``ids`` as a [tokens, channels] float64 matrix (direct, no running sums)."""
    seen = {s.name: [] for s in scopes}
    handles = [model.get_submodule(s.consumer.path).register_forward_pre_hook(
        lambda m, a, n=s.name: seen[n].append(a[0].detach().reshape(-1, a[0].shape[-1]).double())) for s in scopes]
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    return {name: torch.cat(x) for name, x in seen.items()}


def check_valid(plan, scopes):
    by_name = {s.name: s for s in scopes}
    for name, kept in plan.kept.items():
        assert kept == sorted(set(kept)) and 1 <= len(kept) <= by_name[name].num_groups
        assert 0 <= kept[0] and kept[-1] < by_name[name].num_groups


def assert_cut_equals_masked(model, scopes, plan, ids):
    """Surgery on the plan's groups equals masking them (compensation, a bias the masks lack, left out)."""
    cut = common.materialize(model, scopes, dataclasses.replace(plan, channel_means=None))
    with torch.no_grad(), GroupMasks(model, scopes, keep_masks(scopes, plan.kept)):
        masked = model(ids).logits
    with torch.no_grad():
        assert (cut(ids).logits - masked).abs().max() < 1e-5
        assert (masked - model(ids).logits).abs().max() > 1e-3  # the plan did change the model


# ---------------------------------------------------------------------------------------------- FLAP


def test_flap_standardisation_matches_their_code(model, scopes, stats, calibration):
    inputs = consumer_inputs(model, scopes, calibration)
    attn = [s for s in scopes if s.kind == "attention"]
    mlp = [s for s in scopes if s.kind == "mlp"]

    def wifv(s):  # metrics['WIFV']: fluc_inp * sum(W², dim=0)
        w = model.get_submodule(s.consumer.path).weight.detach().double()
        return inputs[s.name].var(dim=0, unbiased=True) * w.pow(2).sum(dim=0)

    standarlization = lambda x: (x - torch.mean(x, axis=1, keepdim=True)) / torch.std(x, axis=1, keepdim=True)  # noqa: E731
    attn_metric = standarlization(torch.stack([wifv(s) ** 2 for s in attn]))
    attn_metric = attn_metric.reshape(len(attn), -1, attn[0].consumer.block).mean(dim=2)
    mlp_metric = standarlization(torch.stack([wifv(s) for s in mlp]))

    ours = flap.flap_group_scores(model, scopes, stats)
    torch.testing.assert_close(torch.stack([ours[s.name] for s in attn]), attn_metric, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.stack([ours[s.name] for s in mlp]), mlp_metric, rtol=1e-9, atol=1e-9)

    # their AL-AM threshold, nearly verbatim (compression weight = a group's cost in neurons)
    ratio = 0.35
    weight = attn[0].params_per_group(model) / mlp[0].params_per_group(model)
    prune_metric = torch.cat([attn_metric.view(-1), mlp_metric.view(-1)])
    sorted_prune, indices = torch.sort(prune_metric, descending=True)
    compression_weight = torch.ones_like(indices, dtype=torch.float64)
    compression_weight[indices < attn_metric.numel()] = weight
    threshold = sorted_prune[torch.argmin(torch.abs(torch.cumsum(compression_weight, 0)
                                                    - torch.sum(compression_weight) * (1 - ratio)))]
    attn_mask, mlp_mask = attn_metric > threshold, mlp_metric > threshold

    plan = flap.flap_plan(model, scopes, stats, ratio)
    assert not plan.details["forced_keeps"]
    for i, s in enumerate(attn):
        assert plan.kept[s.name] == torch.where(attn_mask[i])[0].tolist()
    for i, s in enumerate(mlp):
        assert plan.kept[s.name] == torch.where(mlp_mask[i])[0].tolist()


def test_flap_bias_is_the_mean_of_removed_channels(model, scopes, stats, calibration):
    plan = flap.flap_plan(model, scopes, stats, 0.35)
    cut = common.materialize(model, scopes, plan)
    inputs = consumer_inputs(model, scopes, calibration)
    checked = 0
    for s in scopes:
        removed = sorted(set(range(s.num_groups)) - set(plan.kept[s.name]))
        if not removed:
            continue  # nothing to compensate: the consumer keeps no bias
        checked += 1
        columns = [g * s.consumer.block + j for g in removed for j in range(s.consumer.block)]
        w = model.get_submodule(s.consumer.path).weight.detach().double()
        expected = inputs[s.name].mean(dim=0)[columns] @ w[:, columns].T  # compress(): (mean * ~mask) @ W.T
        torch.testing.assert_close(cut.get_submodule(s.consumer.path).bias.double(), expected, rtol=1e-5, atol=1e-6)
    assert checked >= 2


# ------------------------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_budgets_met_within_one_group(model, scopes, layers, stats, calibration, sparsity):
    target = sparsity * prunable_parameters(model, scopes)
    largest = max(s.params_per_group(model) for s in scopes)
    neuron_per_scope = sum(s.params_per_group(model) for s in scopes if s.kind == "mlp")
    plans = {
        "flap": (flap.flap_plan(model, scopes, stats, sparsity), largest),
        "wanda-sp": (wanda_sp.wanda_sp_plan(model, scopes, layers, calibration, sparsity, batch_size=2), neuron_per_scope),
        "llm-pruner": (llm_pruner.llm_pruner_plan(model, scopes, calibration, sparsity, batch_size=2), neuron_per_scope),
    }
    for name, (plan, tolerance) in plans.items():
        check_valid(plan, scopes)
        removed = common.removed_params(model, scopes, plan)
        assert abs(removed - target) <= tolerance, (name, removed, target)
        assert_cut_equals_masked(model, scopes, plan, calibration[:2])


def test_unmatched_rules_are_theirs(model, scopes, layers, calibration):
    """match_budget=False: int(ratio * n) per layer (Wanda-sp); C - int(C(1-r)) channels (LLM-Pruner)."""
    plan = wanda_sp.wanda_sp_plan(model, scopes, layers, calibration, 0.35, batch_size=2, match_budget=False)
    for s in scopes:
        assert len(plan.kept[s.name]) == s.num_groups - int(0.35 * s.num_groups)
    plan = llm_pruner.llm_pruner_plan(model, scopes, calibration, 0.35, batch_size=2, layers=range(1, 3),
                                      match_budget=False)
    assert set(plan.kept) == {s.name for s in scopes if s.layer in (1, 2)}
    ratio = plan.details["ratio_in_pruned_layers"]
    assert ratio == pytest.approx(0.35 * 4 / 2)
    for s in scopes:
        if s.name in plan.kept:
            head_dim = 8 if s.kind == "attention" else 1  # k_proj rows per KV head in the tiny model
            channels = s.num_groups * head_dim
            pruned = channels - int(channels * (1 - ratio))
            assert s.num_groups - len(plan.kept[s.name]) == pruned // head_dim


def test_llm_pruner_layer_range_scales_llama7b():
    assert llm_pruner.pruned_layer_range(32) == range(4, 30)
    assert llm_pruner.pruned_layer_range(30) == range(4, 28)


# ----------------------------------------------------------------------------------------- Wanda-sp


def test_wanda_sp_is_sequential(model, scopes, layers, calibration):
    """Layer 1 is scored on the output of the *pruned* layer 0, as in prune_wanda_sp."""
    plan = wanda_sp.wanda_sp_plan(model, scopes, layers, calibration, 0.5, batch_size=2)
    layer0 = [s for s in scopes if s.layer == 0]
    layer1 = [s for s in scopes if s.layer == 1]
    with GroupMasks(model, layer0, keep_masks(layer0, {s.name: plan.kept[s.name] for s in layer0})):
        inputs = consumer_inputs(model, layer1, calibration)
    dense_inputs = consumer_inputs(model, layer1, calibration)
    differs = False
    for s in layer1:
        w = model.get_submodule(s.consumer.path).weight.detach().double()
        # W_metric = |W| * sqrt(scaler_row), mean over rows, summed per head
        scores = s.sum_per_group(w.abs().mean(dim=0) * inputs[s.name].pow(2).sum(dim=0).sqrt(), s.consumer)
        dense = s.sum_per_group(w.abs().mean(dim=0) * dense_inputs[s.name].pow(2).sum(dim=0).sqrt(), s.consumer)
        assert plan.kept[s.name] == top_groups(scores, len(plan.kept[s.name]))
        differs |= not torch.allclose(scores, dense)
    assert differs


# --------------------------------------------------------------------------------------- LLM-Pruner


def test_llm_pruner_elementwise_taylor(model, scopes, calibration):
    """One backward of the mean loss over all rows, then Σ |w * g| per group over all its slices."""
    plan = llm_pruner.llm_pruner_plan(model, scopes, calibration, 0.2, batch_size=2)
    model.zero_grad()
    loss = model(calibration, labels=calibration).loss
    loss.backward()
    for s in scopes:
        expected = torch.zeros(s.num_groups, dtype=torch.float64)
        for piece in s.slices:
            lin = model.get_submodule(piece.path)
            salience = (lin.weight * lin.weight.grad).double().abs().sum(dim=1 - piece.dim)
            expected += salience.detach().reshape(s.num_groups, piece.block).sum(dim=1)
        torch.testing.assert_close(plan.details["scores"][s.name], expected, rtol=1e-4, atol=1e-10)
    model.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------ ShortGPT


def test_shortgpt_block_influence(model, scopes, layers, calibration):
    bi = shortgpt.block_influence(model, layers, calibration, batch_size=2)
    with torch.no_grad():
        hidden = model(calibration, output_hidden_states=True).hidden_states
    # hidden_states[i] enters layer i; the last entry is after the final norm, so check layers 0..L-2
    for i in range(len(layers) - 1):
        cos = torch.nn.functional.cosine_similarity(hidden[i].double(), hidden[i + 1].double(), dim=-1)
        assert bi[i].item() == pytest.approx((1 - cos).mean().item(), rel=1e-9)
    plan = shortgpt.shortgpt_plan(model, scopes, layers, calibration, 0.5, batch_size=2)
    assert plan.removed_layers == sorted(torch.argsort(bi)[:2].tolist())
    assert common.achieved_sparsity(model, scopes, plan) == pytest.approx(0.5)


def test_removed_layer_is_identity_and_equals_masking_all_groups(model, scopes, calibration):
    plan = common.BaselinePlan("shortgpt", removed_layers=[1, 2])
    cut = common.materialize(model, scopes, plan)
    gone = [s for s in scopes if s.layer in (1, 2)]
    zeros = {s.name: torch.zeros(s.num_groups) for s in gone}
    with torch.no_grad(), GroupMasks(model, gone, zeros):
        masked = model(calibration).logits
    with torch.no_grad():
        assert (cut(calibration).logits - masked).abs().max() < 1e-5
        assert (masked - model(calibration).logits).abs().max() > 1e-3


# -------------------------------------------------------------------------------------------- random


def test_random_plan_keeps_the_allocation(model, scopes, stats, calibration):
    counts = random_pruning.kept_counts(flap.flap_plan(model, scopes, stats, 0.35).kept)
    a = random_pruning.random_plan(scopes, counts, seed=0)
    check_valid(a, scopes)
    assert random_pruning.kept_counts(a.kept) == counts
    assert a.kept == random_pruning.random_plan(scopes, counts, seed=0).kept
    assert a.kept != random_pruning.random_plan(scopes, counts, seed=1).kept
    assert_cut_equals_masked(model, scopes, a, calibration[:2])
