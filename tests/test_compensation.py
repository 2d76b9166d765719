"""Compensation: folding removed channels' means into the consumer's bias (FLAP), or refitting the kept
columns by least squares, reduces the error of the pruned layer on calibration data, and the model with
the new weights saves and reloads."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_prune import PruningConfig, prune, save_pruned
from hf_prune.adapters import get_adapter
from hf_prune.calibration.statistics import collect_channel_statistics
from hf_prune.cut.compensation import compensate, fold_removed_means
from hf_prune.cut.surgery import prune_scope
from hf_prune.registry import COMPENSATIONS

from .conftest import COMMON, make_model


def test_compensation_reduces_the_output_error_of_a_pruned_layer(family):
    dense = make_model(family)
    rows = torch.randint(0, COMMON["vocab_size"], (6, 24), generator=torch.Generator().manual_seed(3))
    scopes = get_adapter(dense).scopes(dense)
    stats = collect_channel_statistics(dense, scopes, rows)
    for scope in scopes:
        consumer = dense.get_submodule(scope.consumer.path)
        inputs = []
        handle = consumer.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
        with torch.no_grad():
            for row in rows:
                dense(row[None])
        handle.remove()
        x = torch.cat(inputs).reshape(-1, consumer.in_features)
        expected = consumer(x).detach()
        keep = list(range(0, scope.num_groups, 2))

        columns = torch.cat([torch.arange(g * scope.consumer.block, (g + 1) * scope.consumer.block) for g in keep])
        plain = make_model(family)
        prune_scope(plain, scope, keep)
        compensated = make_model(family)
        fold_removed_means(compensated, scope, keep, stats.channels[scope.name].mean)
        prune_scope(compensated, scope, keep)
        with torch.no_grad():
            error_plain = (plain.get_submodule(scope.consumer.path)(x[:, columns]) - expected).pow(2).mean()
            error_comp = (compensated.get_submodule(scope.consumer.path)(x[:, columns]) - expected).pow(2).mean()
        assert error_comp < error_plain, f"{scope.name}: {error_comp:.4g} !< {error_plain:.4g}"


def test_compensated_model_saves_and_reloads_with_its_new_biases(tmp_path):
    model = make_model("llama", attention_bias=False, mlp_bias=False)  # o_proj / down_proj have no bias
    rows = torch.randint(0, COMMON["vocab_size"], (4, 16), generator=torch.Generator().manual_seed(0))
    report = prune(model, PruningConfig(target="emp", units="all", importance="fluctuation", sparsity=0.3,
                                         compensate="bias"), rows)
    assert report.achieved_sparsity > 0.25
    o_proj = model.get_submodule("model.layers.0.self_attn.o_proj")
    assert o_proj.bias is not None and o_proj.bias.abs().sum() > 0
    with torch.no_grad():
        logits = model(rows).logits
    path = save_pruned(model, None, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(rows).logits, logits)


def layer_inputs(model, scope, rows):
    consumer = model.get_submodule(scope.consumer.path)
    inputs = []
    handle = consumer.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    with torch.no_grad():
        model(rows)
    handle.remove()
    return torch.cat(inputs).reshape(-1, consumer.in_features)


def test_least_squares_absorbs_removed_neurons_that_copy_kept_ones():
    """Neurons 48-95 of layer 0 compute exactly what neurons 0-47 compute: the least-squares refit moves their
    down_proj columns onto the kept copies, so the cut layer's output barely changes, where a plain cut and
    the bias fold lose half of it."""
    model = make_model("llama")
    mlp = model.model.layers[0].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[48:] = mlp.gate_proj.weight[:48]
        mlp.up_proj.weight[48:] = mlp.up_proj.weight[:48]
    scope = [s for s in get_adapter(model).scopes(model) if s.name == "layers.0.mlp"][0]
    rows = torch.randint(0, COMMON["vocab_size"], (6, 24), generator=torch.Generator().manual_seed(4))
    stats = collect_channel_statistics(model, [scope], rows, gram=True)
    x = layer_inputs(model, scope, rows)
    with torch.no_grad():
        expected = mlp.down_proj(x)
    keep = list(range(48))
    errors = {}
    for method in ("none", "bias", "lstsq"):
        copy = make_model("llama")
        copy.load_state_dict(model.state_dict())
        if method != "none":
            compensate(copy, [scope], {scope.name: keep}, stats, COMPENSATIONS[method]())
        prune_scope(copy, scope, keep)
        with torch.no_grad():
            errors[method] = float((copy.model.layers[0].mlp.down_proj(x[:, :48]) - expected).pow(2).mean())
    assert errors["lstsq"] < 0.05 * errors["none"], errors  # the 1% ridge keeps it from exactly 0
    assert errors["lstsq"] < errors["bias"] < errors["none"], errors


def test_least_squares_keeps_everything_when_nothing_is_removed_and_needs_second_moments():
    model = make_model("qwen2")
    scope = get_adapter(model).scopes(model)[1]
    rows = torch.randint(0, COMMON["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(5))
    before = model.get_submodule(scope.consumer.path).weight.clone()
    compensate(model, [scope], {scope.name: list(range(scope.num_groups))},
               collect_channel_statistics(model, [scope], rows, gram=True), COMPENSATIONS["lstsq"]())
    assert torch.equal(model.get_submodule(scope.consumer.path).weight, before)
    with pytest.raises(ValueError, match="second moments"):
        compensate(model, [scope], {scope.name: [0]}, collect_channel_statistics(model, [scope], rows), COMPENSATIONS["lstsq"]())


def test_lstsq_from_the_config_cuts_saves_and_reloads(tmp_path):
    model = make_model("mistral")
    rows = torch.randint(0, COMMON["vocab_size"], (4, 16), generator=torch.Generator().manual_seed(0))
    report = prune(model, PruningConfig.from_dict(dict(target="search", sparsity=0.3, compensate="lstsq", search_rows=1,
                                                        mlp_levels=4, refine_rounds=0)), rows)
    assert abs(report.achieved_sparsity - 0.3) < 0.02
    with torch.no_grad():
        logits = model(rows).logits
    reloaded = AutoModelForCausalLM.from_pretrained(save_pruned(model, None, tmp_path / "out"),
                                                    attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(rows).logits, logits)


def test_the_ridge_pulls_the_refit_towards_the_dense_columns_or_towards_zero():
    """With a ridge far stronger than the data, the refit kept columns are their dense values when the ridge is
    centred on them (the objective OBS's damped error assumes), and shrink to nothing when centred on zero; with
    the default 1% both lie close to the plain least-squares fit."""
    from hf_prune.cut.compensation import least_squares_weights

    model = make_model("llama")
    scope = [s for s in get_adapter(model).scopes(model) if s.name == "layers.0.mlp"][0]
    rows = torch.randint(0, COMMON["vocab_size"], (6, 24), generator=torch.Generator().manual_seed(4))
    channels = collect_channel_statistics(model, [scope], rows, gram=True).channels[scope.name]
    weight = model.model.layers[0].mlp.down_proj.weight
    kept = torch.arange(0, weight.shape[1], 2)
    dense_columns = weight.detach().double()[:, kept]
    strong = {towards: least_squares_weights(weight, kept, channels, damping=1e9, ridge_towards=towards)[0]
              for towards in ("dense", "zero")}
    torch.testing.assert_close(strong["dense"], dense_columns, rtol=1e-5, atol=1e-7)
    assert float(strong["zero"].abs().max()) < 1e-6 * float(dense_columns.abs().max())
    light = {towards: least_squares_weights(weight, kept, channels, ridge_towards=towards)[0]
             for towards in ("dense", "zero")}
    plain = least_squares_weights(weight, kept, channels, damping=1e-9)[0]
    for refit in light.values():
        assert float((refit - plain).norm()) < 0.2 * float((dense_columns - plain).norm())
