"""``--target search``: the knapsack is exact, the budget is met within one group, measured costs find a
sublayer that does nothing and remove it whole, refinement never keeps a worse plan, and the command writes
a checkpoint that reloads."""

import itertools
import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_prune import PruningConfig
from hf_prune.adapters import get_adapter
from hf_prune.calibration.statistics import CalibrationStatistics, collect_channel_statistics
from hf_prune.cut.apply import apply_pruning
from hf_prune.cut.compensation import TemporaryCompensation
from hf_prune.cut.masks import GroupMasks, keep_masks
from hf_prune.errors import BudgetError, ConfigError
from hf_prune.modeling import RemovedSublayer
from hf_prune.plan.planner import make_plan
from hf_prune.plan.search.costs import CostMeter, SweepCostMeter
from hf_prune.runtime.spilled import SpillFile
from hf_prune.plan.search.knapsack import Option, solve
from hf_prune.registry import COMPENSATIONS
from hf_prune.plan.search.planner import ScopeChoices, coarse_counts, finer_counts, give_back_surplus, keep_top
from hf_prune.run.cli import main

from .conftest import make_model


def brute_force(options, target):
    feasible = [picks for picks in itertools.product(*(range(len(c)) for c in options))
                if sum(c[i].removed for c, i in zip(options, picks)) >= target]
    return min(sum(c[i].cost for c, i in zip(options, picks)) for picks in feasible)


def test_knapsack_is_exact_against_brute_force():
    rng = random.Random(0)
    for _ in range(150):
        options = [[Option(k, rng.randint(0, 40) * 7, rng.random()) for k in range(rng.randint(1, 4))]
                   for _ in range(rng.randint(1, 4))]
        target = rng.randint(1, sum(max(o.removed for o in c) for c in options) or 1)
        if sum(max(o.removed for o in c) for c in options) < target:
            continue
        picks = solve(options, target, resolution=target)  # one bin per parameter: exact
        assert sum(c[i].removed for c, i in zip(options, picks)) >= target
        assert sum(c[i].cost for c, i in zip(options, picks)) == pytest.approx(brute_force(options, target))


def test_knapsack_with_coarse_bins_still_meets_the_target():
    rng = random.Random(1)
    options = [[Option(k, (10 - k) * 997, (10 - k) ** 2 * rng.random()) for k in range(11)] for _ in range(20)]
    picks = solve(options, 100_003, resolution=64)
    assert sum(c[i].removed for c, i in zip(options, picks)) >= 100_003


def test_knapsack_refuses_a_budget_the_candidates_cannot_meet():
    with pytest.raises(BudgetError, match="at most 10"):
        solve([[Option(1, 0, 0.0), Option(0, 10, 1.0)]], 11)


def test_surplus_goes_back_where_it_saves_most_until_less_than_one_group():
    scope = make_model("llama")  # only for real PrunableScope objects
    mlp0, mlp1 = [s for s in get_adapter(scope).scopes(scope) if s.kind == "mlp"][:2]
    cheap = ScopeChoices(mlp0, 10, {0: 5.0, 32: 0.0})  # re-adding a group saves 5/32 per group
    dear = ScopeChoices(mlp1, 10, {0: 50.0, 32: 0.0})  # saves 50/32: it gets the groups first
    counts = give_back_surplus([cheap, dear], {mlp0.name: 0, mlp1.name: 0}, surplus=405)
    assert counts == {mlp0.name: 8, mlp1.name: 32}  # 32 groups to the dear scope, then 8 of the rest, 5 left


def test_candidate_counts():
    model = make_model("llama")
    attention, mlp = get_adapter(model).scopes(model)[:2]  # 4 KV groups, 96 neurons
    assert coarse_counts(attention, 8, 1) == [0, 1, 2, 3, 4]
    assert coarse_counts(mlp, 8, 1) == list(range(0, 97, 12))
    assert coarse_counts(mlp, 8, 32) == [0, 32, 64, 96]  # 12-neuron steps rounded to multiples of 32
    assert finer_counts(mlp, 48, 6.0, 1) == [36, 42, 48, 54, 60]
    assert finer_counts(mlp, 95, 6.0, 1) == [83, 89, 95]
    assert finer_counts(attention, 0, 6.0, 1) == [0, 1]


@pytest.fixture
def calibration():
    return torch.randint(0, 200, (6, 32), generator=torch.Generator().manual_seed(2))


def search_config(**overrides):
    values = dict(target="search", sparsity=0.3, calibration="given", search_rows=2, mlp_levels=4, refine_rounds=1)
    values.update(overrides)
    return PruningConfig.from_dict(values)


def test_search_meets_the_budget_within_one_group(calibration):
    model = make_model("qwen2")
    plan = make_plan(model, search_config(), input_ids=calibration)
    scopes = get_adapter(model).scopes(model)
    per_group = {s.name: s.params_per_group(model) for s in scopes}
    total = sum(s.num_groups * per_group[s.name] for s in scopes)
    removed = sum((s.num_groups - len(plan.kept[s.name])) * per_group[s.name] for s in scopes)
    assert 0 <= removed - round(0.3 * total) < max(per_group.values())
    rounds = plan.details["rounds"]
    assert rounds[0]["accepted"] and plan.details["held_out_rows"] == 2
    accepted = [r["kl"] for r in rounds if r["accepted"]]
    assert accepted == sorted(accepted, reverse=True)  # a kept round lowered the KL
    assert plan.details["search_kl"] == pytest.approx(accepted[-1])


def test_search_removes_a_sublayer_that_does_nothing(calibration):
    """Layer 1's attention writes nothing (o_proj is zero): its measured cost is 0, so at a budget of exactly
    its size the search removes it whole rather than thin anything useful; the cut model equals the masked one."""
    model = make_model("llama")
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()
    scopes = get_adapter(model).scopes(model)
    size = {s.name: s.num_groups * s.params_per_group(model) for s in scopes}
    config = search_config(sparsity=size["layers.1.attention"] / sum(size.values()))
    plan = make_plan(model, config, input_ids=calibration)
    assert plan.kept["layers.1.attention"] == []
    assert all(len(kept) == next(s.num_groups for s in scopes if s.name == name)
               for name, kept in plan.kept.items() if name != "layers.1.attention")
    with torch.no_grad(), GroupMasks(model, scopes, keep_masks(scopes, plan.kept)):
        expected = model(calibration).logits
    report = apply_pruning(model, config, plan)
    assert isinstance(model.model.layers[1].self_attn, RemovedSublayer)
    assert report.layers[1].kv_groups_after == 0
    with torch.no_grad():
        assert torch.allclose(model(calibration).logits, expected, atol=1e-5)


def test_search_with_units_mlp_keeps_attention(calibration):
    model = make_model("mistral")
    plan = make_plan(model, search_config(units="mlp"), input_ids=calibration)
    assert all(name.endswith(".mlp") for name in plan.kept)


def test_search_options_and_their_errors():
    assert PruningConfig(target="search").units == "all" and PruningConfig().units == "mlp"
    assert PruningConfig(target="search").held_out_rows == 4 and PruningConfig().held_out_rows == 0
    with pytest.raises(ConfigError, match="search only"):
        PruningConfig.from_dict({"mlp_levels": 4})
    with pytest.raises(ConfigError, match="--refine-rounds must be a non-negative integer"):
        PruningConfig.from_dict({"target": "search", "refine_rounds": -1})
    with pytest.raises(ConfigError, match="none for scoring"):
        make_plan(make_model("llama"), search_config(search_rows=6), input_ids=torch.zeros(6, 8, dtype=torch.long))


def test_search_from_the_command_line_reloads(capsys, tmp_path):
    out = tmp_path / "out"
    code = main(["--target", "search", "--sparsity", "0.35", "--mlp-levels", "4", "--refine-rounds", "1",
                 "--calibration-samples", "8", "--seq-len", "64", "--output", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0 and "search: held-out KL" in stdout
    report = json.loads((out / "hf_prune_report.json").read_text())
    assert report["allocation"]["rounds"] and abs(report["achieved_sparsity"] - 0.35) < 0.01
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in reloaded.parameters()) == report["params_after"]


@pytest.mark.parametrize("compensate", ["bias", "lstsq"])
def test_compensated_search_measures_the_model_it_cuts(calibration, compensate):
    """With --compensate the search measures every candidate compensated: the KL it reports for its plan is
    the KL of the model that is then cut and compensated from the same (dense) statistics, on the same held-out
    rows; and planning leaves the model as it was."""
    model = make_model("llama")
    dense_state = {name: value.clone() for name, value in model.state_dict().items()}
    config = search_config(compensate=compensate, sparsity=0.4, refit_on="dense")
    plan = make_plan(model, config, input_ids=calibration)
    assert all(torch.equal(value, dense_state[name]) for name, value in model.state_dict().items())
    held_out = calibration[-config.search.rows:]
    with torch.no_grad():
        reference = torch.log_softmax(model(held_out).logits, dim=-1)
        apply_pruning(model, config, plan)
        cut = torch.log_softmax(model(held_out).logits, dim=-1)
    kl = float((reference.exp() * (reference - cut)).sum(-1).mean())
    assert kl == pytest.approx(plan.details["search_kl"], rel=1e-3, abs=1e-6)


def _cost_table(model, meter_class, rows, compensation=None, **kwargs):
    """Costs of a few candidates (a layer-0 MLP thinned, a middle attention removed whole, the last MLP
    halved) around the dense model and around a plan with the first attention thinned."""
    adapter = get_adapter(model)
    scopes = adapter.scopes(model)
    attention0, mlp0, attention1, mlp_last = scopes[0], scopes[1], scopes[2], scopes[-1]

    def mask(scope, count):
        return keep_top(torch.arange(scope.num_groups, dtype=torch.float), count, torch.device("cpu"))

    requests = [(mlp0, 48, mask(mlp0, 48)), (attention1, 0, mask(attention1, 0)), (mlp_last, 48, mask(mlp_last, 48))]
    with meter_class(model, adapter, scopes, rows, 2, compensation, **kwargs) as meter:
        dense_kl = meter.set_base({})
        around_dense = meter.measure(requests, "test")
        plan_kl = meter.set_base({attention0.name: mask(attention0, 2)})
        around_plan = meter.measure(requests, "test")
        return [dense_kl, plan_kl, *around_dense, *around_plan], meter.layer_passes


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_sweep_measures_the_same_costs_as_the_suffix_runs(calibration, family):
    """--sequential reorders the computation (one pass over the layers), it does not change a number."""
    model = make_model(family)
    suffix, suffix_passes = _cost_table(model, CostMeter, calibration[:4])
    sweep, sweep_passes = _cost_table(model, SweepCostMeter, calibration[:4])
    assert sweep == pytest.approx(suffix, rel=1e-4, abs=1e-7)
    assert suffix[3] > 0 and suffix[5] > 0 and sweep_passes == suffix_passes


def test_sweep_on_an_offloaded_model_loads_each_layer_once_per_pass(calibration, monkeypatch):
    """With accelerate's offload hooks (the 70B-on-one-GPU set-up, here with the CPU as execution device) the
    sweep gives the costs of the model in memory, and a layer's weights are loaded once per pass, not once
    per candidate that runs through it."""
    import accelerate.hooks
    from accelerate import cpu_offload

    model = make_model("llama")
    expected, _ = _cost_table(model, CostMeter, calibration[:4])
    cpu_offload(model, execution_device=torch.device("cpu"))
    assert model.model.layers[0].mlp.down_proj.weight.device.type == "meta"
    probe = model.model.layers[-1].mlp.down_proj
    loads = []
    original = accelerate.hooks.set_module_tensor_to_device

    def counting(module, name, device, value=None, **kwargs):  # a load is a copy from the offloaded weights
        if module is probe and name == "weight" and str(device) != "meta":
            loads.append(device)
        return original(module, name, device, value=value, **kwargs)

    monkeypatch.setattr(accelerate.hooks, "set_module_tensor_to_device", counting)
    spilled, spill = [], SpillFile.spill
    monkeypatch.setattr(SpillFile, "spill", lambda self, tensor: spilled.append(tensor.shape) or spill(self, tensor))
    measured, _ = _cost_table(model, SweepCostMeter, calibration[:4])
    assert measured == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert len(loads) == 4  # two set_base and two measure passes
    assert sum(len(shape) == 2 for shape in spilled) == 2  # the dense reference, a batch of cost rows at a time,
    assert any(len(shape) == 3 for shape in spilled)  # and the candidates' activations between layers: in a file
    assert probe.weight.device.type == "meta"  # dropped again after the pass


def _compensated_cost_table(model, meter_class, calibration, compensate="lstsq"):
    """:func:`_cost_table` with every candidate compensated: from the dense statistics of ``calibration[4:]`` (the
    suffix runs), or, in a sweep, from statistics the meter gathers on those rows one layer at a time."""
    scopes = get_adapter(model).scopes(model)
    rows = calibration[4:]
    if meter_class is CostMeter:
        stats = collect_channel_statistics(model, scopes, rows, gram=True)
        compensation = TemporaryCompensation(model, scopes, stats, COMPENSATIONS[compensate]())
        return _cost_table(model, meter_class, calibration[:4], compensation)
    compensation = TemporaryCompensation(model, scopes, CalibrationStatistics(), COMPENSATIONS[compensate]())
    return _cost_table(model, meter_class, calibration[:4], compensation, calibration_rows=rows)


@pytest.mark.parametrize("compensate", ["lstsq", "bias"])
def test_a_compensated_sweep_gathers_each_layers_statistics_itself(calibration, compensate):
    """Around the dense model the sweep's compensated costs are those of the suffix runs compensated from the dense
    statistics; around a plan they are measured on the plan's own activations, so they differ (a little)."""
    model = make_model("llama")
    suffix, _ = _compensated_cost_table(model, CostMeter, calibration, compensate)
    sweep, _ = _compensated_cost_table(model, SweepCostMeter, calibration, compensate)
    assert sweep[:1] + sweep[2:5] == pytest.approx(suffix[:1] + suffix[2:5], rel=1e-4, abs=1e-7)
    assert sweep[5:] != pytest.approx(suffix[5:], rel=1e-6, abs=0)


def test_a_compensated_sweep_runs_on_an_offloaded_model_and_leaves_it_dense(calibration):
    """Least squares with the weights in accelerate's offload store (``--layerwise`` / ``--device-map``): the costs
    of the model in memory, and the weights on disk untouched."""
    from accelerate import cpu_offload

    model = make_model("qwen3")
    dense = {name: value.clone() for name, value in model.state_dict().items()}
    expected, _ = _compensated_cost_table(model, SweepCostMeter, calibration)
    assert all(torch.equal(value, dense[name]) for name, value in model.state_dict().items())
    cpu_offload(model, execution_device=torch.device("cpu"))
    measured, _ = _compensated_cost_table(model, SweepCostMeter, calibration)
    assert measured == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert model.model.layers[0].mlp.down_proj.weight.device.type == "meta"


def test_sequential_search_of_an_offloaded_model_finds_the_same_plan(calibration):
    """Calibration and search layer by layer on a model whose weights accelerate offloaded: the plan of
    the model in memory."""
    from accelerate import cpu_offload

    model = make_model("mistral")
    expected = make_plan(model, search_config(), input_ids=calibration).kept
    assert make_plan(model, search_config(sequential=True), input_ids=calibration).kept == expected
    cpu_offload(model, execution_device=torch.device("cpu"))
    assert make_plan(model, search_config(sequential=True), input_ids=calibration).kept == expected


def test_offloaded_model_from_the_command_line_is_cut_in_cpu_memory(capsys, tmp_path, monkeypatch):
    """A model that --device-map offloaded is calibrated and searched layer by layer, then reloaded into CPU
    memory for the cut (accelerate's store holds the real weights): the checkpoint equals the in-memory run's."""
    from accelerate import cpu_offload

    import hf_prune.run.stages

    argv = ["--target", "search", "--sparsity", "0.35", "--mlp-levels", "4", "--refine-rounds", "1",
            "--calibration-samples", "8", "--seq-len", "64", "--sequential"]
    assert main([*argv, "--output", str(tmp_path / "in_memory")]) == 0
    load_model, calls = hf_prune.run.stages.load_model, []

    def offloading(*args, device_map=None, **kwargs):
        model, tokenizer = load_model(*args, device_map=device_map, **kwargs)
        calls.append(device_map)
        if len(calls) == 1:  # the first load stands in for --device-map with CPU offload
            cpu_offload(model, execution_device=torch.device("cpu"))
        return model, tokenizer

    monkeypatch.setattr(hf_prune.run.stages, "load_model", offloading)
    capsys.readouterr()
    assert main([*argv, "--output", str(tmp_path / "offloaded")]) == 0
    assert "reloading" in capsys.readouterr().out and len(calls) == 2 and calls[1] is None
    expected = AutoModelForCausalLM.from_pretrained(tmp_path / "in_memory").state_dict()
    offloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "offloaded").state_dict()
    assert expected.keys() == offloaded.keys()
    assert all(torch.equal(expected[name], offloaded[name]) for name in expected)
