"""``--refit-on pruned``: the cut walks the layers in order and refits each consumer on the activations of the
layers already cut; ``--refit-on dense`` refits from the dense model's statistics, gathered before the cut."""

import copy

import pytest
import torch

from hf_prune import PruningConfig
from hf_prune.adapters import get_adapter
from hf_prune.calibration.statistics import ChannelStatistics, collect_channel_statistics
from hf_prune.cut.apply import PruningPlan, apply_pruning
from hf_prune.cut.compensation import compensate_scope
from hf_prune.cut.surgery import apply_plan
from hf_prune.errors import ConfigError
from hf_prune.plan.planner import collect_statistics, make_plan
from hf_prune.registry import COMPENSATIONS
from hf_prune.testing import make_tiny_model, random_plan

ROWS = torch.randint(0, 200, (6, 16), generator=torch.Generator().manual_seed(0))


def refit_by_hand(model, kept, compensation_name: str) -> None:
    """The walk's meaning, written the slow way: before each scope is cut, its consumer's statistics are
    gathered by a full forward of the model as it is then (every earlier scope already cut)."""
    compensation = COMPENSATIONS[compensation_name]()
    for scope in get_adapter(model).scopes(model):
        if scope.name not in kept:
            continue
        stats = collect_channel_statistics(model, [scope], ROWS, gram=compensation.second_moments)
        compensate_scope(model, scope, kept[scope.name], stats.channels[scope.name], compensation)
        apply_plan(model, [scope], kept, allow_empty=True)


def refit_asymmetric_by_hand(model, kept, compensation_name: str) -> None:
    """The asymmetric walk, the slow way: each consumer's inputs in the model as cut so far, paired token by token
    with its inputs in the dense model, both from full forward passes."""
    compensation = COMPENSATIONS[compensation_name]()
    dense = copy.deepcopy(model)
    for scope in get_adapter(model).scopes(model):
        if scope.name not in kept:
            continue
        consumer = model.get_submodule(scope.consumer.path)
        channels = ChannelStatistics.zeros(consumer.in_features, gram=compensation.second_moments, target=True)
        targets = []
        hooks = [dense.get_submodule(scope.consumer.path).register_forward_pre_hook(
                     lambda module, args: targets.append(args[0])),
                 consumer.register_forward_pre_hook(lambda module, args: channels.update(args[0], targets.pop()))]
        with torch.no_grad():
            for row in ROWS:
                dense(row[None])
                model(row[None])
        for hook in hooks:
            hook.remove()
        compensate_scope(model, scope, kept[scope.name], channels, compensation)
        apply_plan(model, [scope], kept, allow_empty=True)


@pytest.mark.parametrize("compensate", ["lstsq", "bias"])
def test_the_asymmetric_walk_reproduces_the_dense_models_own_consumer_outputs(compensate):
    model = make_tiny_model("qwen2", num_hidden_layers=3)
    kept = random_plan(model, seed=4)
    expected = copy.deepcopy(model)
    refit_asymmetric_by_hand(expected, kept, compensate)
    symmetric = copy.deepcopy(model)
    apply_pruning(symmetric, PruningConfig(compensate=compensate, sparsity=0.3),
                  PruningPlan(kept, {}, {}, [], None, None, ROWS))

    config = PruningConfig(compensate=compensate, sparsity=0.3, refit_on="asymmetric")
    report = apply_pruning(model, config, PruningPlan(kept, {}, {}, [], None, None, ROWS))
    got, want = model.state_dict(), expected.state_dict()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    first = "model.layers.0.self_attn.o_proj.bias"  # the first consumer: both streams are still the same
    torch.testing.assert_close(got[first], symmetric.state_dict()[first])
    last = "model.layers.2.mlp.down_proj.bias"
    assert not torch.allclose(got[last], symmetric.state_dict()[last], atol=1e-5)
    assert report.refit["layer_passes"] > 3 * 3 - 1  # the dense stream's passes too


@pytest.mark.parametrize("compensate", ["lstsq", "bias"])
def test_the_walk_refits_every_scope_on_the_inputs_the_cut_prefix_gives_it(family, compensate):
    model = make_tiny_model(family, num_hidden_layers=3)
    kept = random_plan(model, seed=2)
    expected = copy.deepcopy(model)
    refit_by_hand(expected, kept, compensate)

    config = PruningConfig(compensate=compensate, sparsity=0.3, units="all")
    report = apply_pruning(model, config, PruningPlan(kept, {}, {}, [], None, None, ROWS))
    got, want = model.state_dict(), expected.state_dict()
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    # attention and MLP of each layer refit in turn: two passes to gather, one to move on (none after the last)
    assert report.refit["layer_passes"] == 3 * 3 - 1 and report.refit["tokens"] == ROWS.numel()


def test_dense_and_pruned_refits_agree_on_the_first_layer_and_differ_after_it():
    model = make_tiny_model("llama", num_hidden_layers=3)
    kept = {name: groups for name, groups in random_plan(model, seed=1).items() if name.endswith("mlp")}
    weights = {}
    for refit_on in ("pruned", "dense"):
        config = PruningConfig(compensate="lstsq", refit_on=refit_on, sparsity=0.3)
        copy_ = copy.deepcopy(model)
        stats = collect_statistics(copy_, get_adapter(copy_).scopes(copy_), config, ROWS)
        apply_pruning(copy_, config, PruningPlan(kept, {}, {}, [], None, stats, ROWS))
        weights[refit_on] = [copy_.get_submodule(f"model.layers.{i}.mlp.down_proj").weight for i in range(3)]
    torch.testing.assert_close(weights["pruned"][0], weights["dense"][0])  # the same inputs reach layer 0
    assert not torch.allclose(weights["pruned"][2], weights["dense"][2], atol=1e-4)


def test_a_refit_on_pruned_inputs_does_not_gather_the_dense_second_moments():
    """Least squares on pruned inputs holds one layer's d×d matrices at a time, never every layer's; a search
    still reads the dense ones to measure its compensated candidates."""
    model = make_tiny_model("llama")
    for target, refit_on, grams in (("emp", "pruned", False), ("emp", "dense", True), ("search", "pruned", True)):
        config = PruningConfig(target=target, compensate="lstsq", refit_on=refit_on, sparsity=0.3)
        stats = collect_statistics(model, get_adapter(model).scopes(model), config, ROWS)
        assert all((channels.gram is not None) == grams for channels in stats.channels.values()), (target, refit_on)


def test_a_plan_without_its_rows_cannot_be_refit_on_pruned_inputs():
    model = make_tiny_model("llama")
    config = PruningConfig(compensate="lstsq", sparsity=0.3)
    with pytest.raises(ConfigError, match="--refit-on dense"):
        apply_pruning(model, config, PruningPlan(random_plan(model), {}, {}, [], None, None))


def test_make_plan_hands_its_rows_to_the_cut():
    model = make_tiny_model("llama")
    config = PruningConfig(compensate="bias", sparsity=0.3)
    plan = make_plan(model, config, ROWS)
    assert torch.equal(plan.rows, ROWS)
    assert apply_pruning(model, config, plan).refit["tokens"] == ROWS.numel()


def test_refit_on_is_refused_without_compensation_and_checked():
    with pytest.raises(ConfigError, match="refit"):
        PruningConfig(refit_on="sideways")
    with pytest.raises(ConfigError, match="--refit-on applies with --compensate"):
        PruningConfig(refit_on="dense")
