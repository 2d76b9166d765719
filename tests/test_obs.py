"""``--compensate obs``: least squares whose kept groups (at the plan's counts) are chosen by greedy Optimal Brain
Surgeon errors on the consumer's inputs."""

import copy

import pytest
import torch

from hf_prune import PruningConfig
from hf_prune.adapters import get_adapter
from hf_prune.calibration.statistics import ChannelStatistics, collect_channel_statistics
from hf_prune.cut.apply import PruningPlan, apply_pruning
from hf_prune.cut.compensation import TemporaryCompensation, obs_kept_groups
from hf_prune.cut.compensation import base as compensation_base
from hf_prune.cut.compensation.obs import OptimalBrainSurgeonCompensation, obs_removal_order
from hf_prune.testing import make_tiny_model, random_plan


def statistics_of(inputs: torch.Tensor) -> ChannelStatistics:
    channels = ChannelStatistics.zeros(inputs.shape[1], gram=True)
    channels.update(inputs)
    return channels


def refit_error(weight: torch.Tensor, inputs: torch.Tensor, kept_columns: list[int]) -> float:
    """‖W x − (W' x_K + b')‖² summed over the rows, W' and b' by exact least squares (with an intercept)."""
    design = torch.cat([inputs[:, kept_columns], torch.ones(inputs.shape[0], 1, dtype=inputs.dtype)], dim=1)
    target = inputs @ weight.T
    solution = torch.linalg.lstsq(design, target).solution
    return float((design @ solution - target).pow(2).sum())


def correlated_inputs(rows: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width, width, generator=generator, dtype=torch.float64)
    return torch.randn(rows, width, generator=generator, dtype=torch.float64) @ mixing + 0.5


def test_the_channel_a_kept_one_copies_goes_first_though_it_is_the_strongest():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(500, 3, generator=generator, dtype=torch.float64)
    copy_ = base[:, :1] + 1e-3 * torch.randn(500, 1, generator=generator, dtype=torch.float64)
    inputs = torch.cat([3 * base[:, :1], 3 * copy_, base[:, 1:]], dim=1)  # columns 0 and 1: the same signal, loudest
    weight = torch.ones(4, 4, dtype=torch.float64)
    kept = obs_kept_groups(weight, 1, 3, statistics_of(inputs))
    assert len(kept) == 3 and set(kept) >= {2, 3}  # an activation criterion would remove column 2 or 3


def test_removing_one_group_picks_the_one_whose_refit_leaves_the_least_error():
    inputs = correlated_inputs(400, 8, seed=1)
    weight = torch.randn(5, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    kept = obs_kept_groups(weight, 1, 7, statistics_of(inputs), damping=1e-9)
    errors = {j: refit_error(weight, inputs, [c for c in range(8) if c != j]) for j in range(8)}
    assert set(range(8)) - set(kept) == {min(errors, key=errors.get)}


def test_groups_of_several_columns_are_removed_whole():
    inputs = correlated_inputs(400, 6, seed=3)
    inputs = torch.cat([inputs, inputs[:, 2:4] * 2 + 1e-3 * torch.randn(400, 2, dtype=torch.float64)], dim=1)
    weight = torch.randn(3, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    kept = obs_kept_groups(weight, 2, 3, statistics_of(inputs))  # groups: columns 0-1, 2-3, 4-5, 6-7 (a copy of 2-3)
    assert len(kept) == 3 and set(range(4)) - set(kept) <= {1, 3}


@pytest.mark.parametrize("rounds", [12, 100])
def test_the_greedy_choice_beats_a_ranking_by_output_norm(rounds):
    inputs = correlated_inputs(600, 24, seed=5)
    weight = torch.randn(6, 24, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    kept = obs_kept_groups(weight, 1, 12, statistics_of(inputs), rounds=rounds)
    assert len(kept) == len(set(kept)) == 12 and kept == sorted(kept)
    activation = (inputs.norm(dim=0) * weight.norm(dim=0)).argsort(descending=True)[:12].sort().values.tolist()
    assert refit_error(weight, inputs, kept) < refit_error(weight, inputs, activation)


def test_the_cut_keeps_the_plans_counts_and_reports_the_groups_obs_chose(family):
    model = make_tiny_model(family, num_hidden_layers=2)
    rows = torch.randint(0, 200, (6, 16), generator=torch.Generator().manual_seed(0))
    kept = random_plan(model, seed=5)
    dense = copy.deepcopy(model)
    with torch.no_grad():
        reference = dense(rows).logits
    errors, plans = {}, {}
    for name in ("lstsq", "obs"):
        pruned = copy.deepcopy(model)
        report = apply_pruning(pruned, PruningConfig(compensate=name, sparsity=0.3, units="all"),
                               PruningPlan(copy.deepcopy(kept), {}, {}, [], None, None, rows))
        plans[name] = report.plan
        with torch.no_grad():
            errors[name] = float((pruned(rows).logits - reference).pow(2).mean())
    assert {k: len(v) for k, v in plans["obs"].items()} == {k: len(v) for k, v in kept.items()}
    assert plans["lstsq"] == kept and plans["obs"] != kept
    assert errors["obs"] < errors["lstsq"], errors  # the random plan's choice, refit alike, loses


def test_every_prefix_of_the_removal_order_is_a_choice_that_beats_the_output_norm_ranking():
    """The search reads every width of a scope off one greedy order: each prefix is a set to remove, and the groups it
    leaves refit better than those an activation ranking keeps at the same count."""
    inputs = correlated_inputs(600, 24, seed=7)
    weight = torch.randn(6, 24, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    order = obs_removal_order(weight, 1, 23, statistics_of(inputs))
    assert len(order) == len(set(order)) == 23
    ranking = (inputs.norm(dim=0) * weight.norm(dim=0)).argsort(descending=True).tolist()
    for count in (6, 12, 18):
        kept = sorted(set(range(24)) - set(order[:24 - count]))
        assert refit_error(weight, inputs, kept) < refit_error(weight, inputs, sorted(ranking[:count]))
    # the deepest prefix is the cut's own choice at that count
    assert sorted(set(range(24)) - set(order)) == obs_kept_groups(weight, 1, 1, statistics_of(inputs))


@pytest.mark.parametrize("measures_choice", [True, False])
def test_the_search_measures_a_width_with_the_groups_obs_keeps_at_that_count(monkeypatch, measures_choice):
    """A candidate of the search keeps the criterion's groups; compensated by OBS, it is measured with the groups OBS
    would keep at that count (what the cut will keep) — the mask that comes back — unless that is switched off."""
    monkeypatch.setattr(compensation_base, "SEARCH_MEASURES_CHOICE", measures_choice)
    model = make_tiny_model("llama", num_hidden_layers=2)
    scopes = get_adapter(model).scopes(model)
    rows = torch.randint(0, 200, (6, 32), generator=torch.Generator().manual_seed(3))
    stats = collect_channel_statistics(model, scopes, rows, gram=True)
    scope = next(s for s in scopes if s.kind == "mlp")
    consumer = model.get_submodule(scope.consumer.path)
    dense = consumer.weight.detach().clone()
    criterion = torch.zeros(scope.num_groups)
    criterion[: scope.num_groups // 2] = 1.0
    compensation = OptimalBrainSurgeonCompensation()
    with TemporaryCompensation(model, scopes, stats, compensation) as temporary:
        chosen = temporary.set(scope, criterion)
        assert int(chosen.sum()) == scope.num_groups // 2
        expected = compensation.choose(dense, scope.consumer.block, criterion.nonzero().flatten().tolist(),
                                       stats.channels[scope.name], derived={})
        assert chosen.nonzero().flatten().tolist() == (expected if measures_choice else list(range(scope.num_groups // 2)))
        assert expected != list(range(scope.num_groups // 2))  # OBS's choice differs from the criterion's here
        assert temporary.set(scope, torch.ones(scope.num_groups)) is None  # dense again
    assert torch.equal(consumer.weight, dense)


def test_a_scope_derives_its_removal_order_once_while_its_candidates_are_measured(monkeypatch):
    """The search restores the base between two candidates of a scope — the dense model, in its first table — and
    the greedy order derived for the first must serve the next (it was derived again for every candidate); setting
    another scope forgets it (memory holds one scope's), and the weights are those a fresh derivation gives."""
    from hf_prune.cut.compensation import obs as obs_module

    calls = []
    original = obs_module.obs_removal_order
    monkeypatch.setattr(obs_module, "obs_removal_order", lambda *a, **k: calls.append(1) or original(*a, **k))
    model = make_tiny_model("llama", num_hidden_layers=2)
    scopes = get_adapter(model).scopes(model)
    rows = torch.randint(0, 200, (6, 32), generator=torch.Generator().manual_seed(3))
    stats = collect_channel_statistics(model, scopes, rows, gram=True)
    mlp, attention = (next(s for s in scopes if s.kind == kind and s.layer == 0) for kind in ("mlp", "attention"))
    widths = [torch.cat([torch.ones(keep), torch.zeros(mlp.num_groups - keep)]) for keep in (4, 9, 13)]
    consumer = model.get_submodule(mlp.consumer.path)
    measured = []
    with TemporaryCompensation(model, scopes, stats, OptimalBrainSurgeonCompensation()) as temporary:
        for mask in widths:
            temporary.set(mlp, mask)
            measured.append(consumer.weight.detach().clone())
            assert temporary.set(mlp, torch.ones(mlp.num_groups)) is None  # the dense base between candidates
        assert len(calls) == 1
        temporary.set(attention, torch.cat([torch.ones(1), torch.zeros(attention.num_groups - 1)]))
        temporary.set(mlp, widths[0])
        assert len(calls) == 3  # the attention scope's own order, then the MLP's once more
    for mask, weight in zip(widths, measured):
        with TemporaryCompensation(model, scopes, stats, OptimalBrainSurgeonCompensation()) as fresh:
            fresh.set(mlp, mask)
            assert torch.equal(consumer.weight, weight)
