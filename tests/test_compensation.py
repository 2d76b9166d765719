"""Bias compensation: folding removed channels' means into the consumer's bias reduces the error of the
pruned layer on calibration data, and the model with the new bias saves and reloads."""

import torch
from transformers import AutoModelForCausalLM

from hf_prune import PruningConfig, prune, save_pruned
from hf_prune.adapters import get_adapter
from hf_prune.compensation import fold_removed_means
from hf_prune.statistics import collect_channel_statistics
from hf_prune.surgery import prune_scope

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
