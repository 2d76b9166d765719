"""Each criterion: right shape/dtype/sign on all four families, and equal to a direct computation."""

import pytest
import torch

from hf_prune.adapters import get_adapter
from hf_prune.calibration.statistics import CalibrationStatistics, collect_channel_statistics, collect_taylor_statistics
from hf_prune.plan.importance import get_importance
from hf_prune.registry import IMPORTANCES

from .conftest import COMMON, make_model


@pytest.fixture
def calibration_rows():
    return torch.randint(0, COMMON["vocab_size"], (4, 16), generator=torch.Generator().manual_seed(7))


def statistics(model, scopes, rows) -> CalibrationStatistics:
    stats = collect_channel_statistics(model, scopes, rows)
    return collect_taylor_statistics(model, scopes, rows, stats=stats)


@pytest.mark.parametrize("name", sorted(IMPORTANCES))
def test_every_criterion_on_every_family(family, name, calibration_rows):
    model = make_model(family)
    scopes = get_adapter(model).scopes(model)
    stats = statistics(model, scopes, calibration_rows)
    criterion = get_importance(name)
    for scope in scopes:
        scores = criterion(model, scope, stats)
        assert scores.dtype == torch.float64 and scores.shape == (scope.num_groups,)
        assert (scores >= 0).all() and torch.isfinite(scores).all()
        assert scores.std() > 0, f"{name} gives identical scores to all groups of {scope.name}"


def consumer_inputs(model, scope, rows) -> torch.Tensor:
    seen = []
    consumer = model.get_submodule(scope.consumer.path)
    handle = consumer.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for row in rows:
            model(row[None])
    handle.remove()
    return torch.cat(seen).to(torch.float64)


def test_activation_and_fluctuation_match_a_direct_computation(calibration_rows):
    model = make_model("qwen2")
    scopes = get_adapter(model).scopes(model)
    stats = collect_channel_statistics(model, scopes, calibration_rows)
    for scope in scopes:
        inputs = consumer_inputs(model, scope, calibration_rows)
        weight = model.get_submodule(scope.consumer.path).weight.detach().to(torch.float64)
        column_norm = weight.norm(dim=0)
        activation = (inputs.norm(dim=0) * column_norm).reshape(scope.num_groups, -1).sum(1)
        fluctuation = (inputs.var(dim=0, unbiased=True) * column_norm**2).reshape(scope.num_groups, -1).sum(1)
        torch.testing.assert_close(get_importance("activation")(model, scope, stats), activation, rtol=1e-9, atol=0)
        torch.testing.assert_close(get_importance("fluctuation")(model, scope, stats), fluctuation, rtol=1e-7, atol=1e-12)


def test_taylor_matches_the_gradient_of_the_total_loss(calibration_rows):
    model = make_model("llama")
    scopes = get_adapter(model).scopes(model)
    stats = collect_taylor_statistics(model, scopes, calibration_rows)
    model.zero_grad()
    for row in calibration_rows:
        model(row[None], labels=row[None]).loss.backward()  # gradients accumulate: d(sum of losses)
    for scope in scopes:
        expected = torch.zeros(scope.num_groups, dtype=torch.float64)
        for piece in scope.slices:
            weight = model.get_submodule(piece.path).weight
            product = (weight.detach() * weight.grad).to(torch.float64).sum(dim=1 - piece.dim)
            expected += product.reshape(scope.num_groups, -1).sum(1)
        torch.testing.assert_close(get_importance("taylor")(model, scope, stats), expected.abs(), rtol=1e-4, atol=1e-7)
    assert all(p.grad is None or p.requires_grad for p in model.parameters())


def test_data_free_magnitude_needs_no_statistics():
    model = make_model("mistral")
    scope = get_adapter(model).scopes(model)[1]
    scores = get_importance("magnitude")(model, scope)
    weight_norms = sum(
        model.get_submodule(p.path).weight.detach().to(torch.float64).pow(2).sum(dim=1 - p.dim) for p in scope.slices
    ).sqrt()
    torch.testing.assert_close(scores, weight_norms)
    with pytest.raises(ValueError, match="needs calibration"):
        get_importance("activation")(model, scope)
