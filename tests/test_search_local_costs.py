"""``--search-costs local``: one probe per scope and direction is measured through the rest of the model, every other
candidate is scaled by the change of its own layer's output; the sweep gives the numbers of the suffix runs, on a model
in memory, offloaded, and compensated."""

import pytest
import torch

from hf_prune.adapters import get_adapter
from hf_prune.calibration.statistics import CalibrationStatistics
from hf_prune.cut.compensation import TemporaryCompensation
from hf_prune.plan.planner import make_plan
from hf_prune.plan.search.costs import CostMeter, SweepCostMeter
from hf_prune.plan.search.planner import keep_top
from hf_prune.plan.search.probes import Candidate, choose_probes, scaled_costs
from hf_prune.registry import COMPENSATIONS

from .conftest import make_model
from .test_search import calibration, search_config  # noqa: F401  (calibration: the search tests' fixture)


def test_the_probe_is_the_median_count_of_each_scope_and_direction_and_removal_is_measured_itself():
    candidates = [Candidate("mlp", kept, 8) for kept in (0, 2, 3, 4, 5, 6)] + [Candidate("mlp", 9, 8),
                                                                              Candidate("att", 1, 2)]
    probes = choose_probes(candidates, [4.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 7.0])
    assert probes == {("mlp", "removed"): 0, ("mlp", "fewer"): 3, ("mlp", "more"): 6, ("att", "fewer"): 7}


def test_candidates_that_change_nothing_are_never_probes_and_cost_nothing():
    candidates = [Candidate("mlp", kept, 8) for kept in (1, 2, 4)] + [Candidate("dead", 0, 2)]
    local = [4.0, 0.0, 2.0, 0.0]
    probes = choose_probes(candidates, local)
    assert probes == {("mlp", "fewer"): 2}
    assert scaled_costs(candidates, local, probes, {2: 0.3}) == pytest.approx([0.6, 0.0, 0.3, 0.0])


def test_costs_are_the_probes_times_the_ratio_of_local_changes_with_their_sign():
    """Around a plan, giving groups back lowers the KL: a negative probe scales its family negatively, and the
    other direction has its own probe."""
    candidates = [Candidate("mlp", kept, 4) for kept in (2, 3, 5, 6)]
    local = [4.0, 1.0, 1.0, 3.0]
    probes = choose_probes(candidates, local)
    assert scaled_costs(candidates, local, probes, {probes[("mlp", "fewer")]: 0.2, probes[("mlp", "more")]: -0.3}) == \
        pytest.approx([0.8, 0.2, -0.1, -0.3])


def _requests(model):
    """Several counts of two scopes, so that most candidates are scaled rather than probed."""
    scopes = get_adapter(model).scopes(model)
    attention1, mlp1 = scopes[2], scopes[3]

    def mask(scope, count):
        return keep_top(torch.arange(scope.num_groups, dtype=torch.float), count, torch.device("cpu"))

    counts = {attention1: range(attention1.num_groups), mlp1: range(0, mlp1.num_groups, mlp1.num_groups // 4)}
    return scopes, [(scope, count, mask(scope, count)) for scope, values in counts.items() for count in values], mask


def _local_table(model, meter_class, rows, compensation=None, **kwargs):
    scopes, requests, mask = _requests(model)
    with meter_class(model, get_adapter(model), scopes, rows, 2, compensation, **kwargs) as meter:
        meter.set_base({})
        around_dense = meter.measure(requests, "test", local=True)
        meter.set_base({scopes[0].name: mask(scopes[0], 1), scopes[3].name: mask(scopes[3], scopes[3].num_groups // 2)})
        around_plan = meter.measure(requests, "test", local=True)
        return around_dense + around_plan, meter.layer_passes


def test_local_costs_scale_the_probes_measured_costs_by_the_local_change(calibration):
    """In memory: each probe's cost is its measured KL cost, every other candidate's is that times the ratio of the
    squared changes of the layer's output; and it takes fewer layer passes than measuring every candidate."""
    model = make_model("llama", num_hidden_layers=6)
    scopes, requests, _ = _requests(model)
    rows = calibration[:4]
    with CostMeter(model, get_adapter(model), scopes, rows, 2) as meter:
        meter.set_base({})
        exact = meter.measure(requests, "test")
        exact_passes = meter.layer_passes
        changes = [sum(meter.local_changes(scope, mask)) for scope, _, mask in requests]
    candidates = [Candidate(scope.name, count, scope.num_groups) for scope, count, _ in requests]
    probes = choose_probes(candidates, changes)
    expected = scaled_costs(candidates, changes, probes, {i: exact[i] for i in probes.values()})
    local, local_passes = _local_table(model, CostMeter, rows)
    assert local[: len(requests)] == pytest.approx(expected, rel=1e-5, abs=1e-8)
    assert all(cost > 0 for cost in local[: len(requests)])
    assert local_passes < 2 * exact_passes  # two tables


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_a_local_sweep_measures_the_numbers_of_the_suffix_runs(calibration, family):
    model = make_model(family)
    suffix, suffix_passes = _local_table(model, CostMeter, calibration[:4])
    sweep, sweep_passes = _local_table(model, SweepCostMeter, calibration[:4])
    assert sweep == pytest.approx(suffix, rel=1e-4, abs=1e-7)
    assert sweep_passes <= suffix_passes  # the sweep carries on the probes' local pass; the suffix runs repeat it


def test_a_compensated_local_sweep_runs_on_an_offloaded_model(calibration):
    """Least squares gathered layer by layer, weights in accelerate's offload store: the costs in memory."""
    from accelerate import cpu_offload

    model = make_model("mistral")

    def table():
        scopes = get_adapter(model).scopes(model)
        compensation = TemporaryCompensation(model, scopes, CalibrationStatistics(), COMPENSATIONS["lstsq"]())
        return _local_table(model, SweepCostMeter, calibration[:4], compensation, calibration_rows=calibration[4:])[0]

    expected = table()
    cpu_offload(model, execution_device=torch.device("cpu"))
    assert table() == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_search_with_local_costs_meets_the_budget_and_finds_the_sequential_plan(calibration):
    model = make_model("llama")
    config = search_config(search_costs="local", compensate="lstsq")
    plan = make_plan(model, config, input_ids=calibration)
    assert plan.kept == make_plan(model, search_config(search_costs="local", compensate="lstsq", sequential=True),
                                  input_ids=calibration).kept
    assert plan.details["search_kl"] > 0


def test_probes_on_fewer_rows_scale_from_the_local_change_measured_on_those_rows(calibration):
    """--search-probe-rows: a probe's KL is measured on the first batch only and divided by its local change there;
    every candidate's own change comes from all the rows: cost = KL_first(probe) x change_all(c)/N_all /
    (change_first(probe)/N_first). In memory and in one sweep, the same numbers."""
    model = make_model("llama", num_hidden_layers=6)
    scopes, requests, _ = _requests(model)
    rows = calibration[:4]
    with CostMeter(model, get_adapter(model), scopes, rows[:2], 2) as first_batch:
        first_batch.set_base({})
        candidates = [Candidate(scope.name, count, scope.num_groups) for scope, count, _ in requests]
        first = [sum(first_batch.local_changes(scope, mask)) for scope, _, mask in requests]
        with CostMeter(model, get_adapter(model), scopes, rows, 2) as every_row:
            every_row.set_base({})
            changes = [sum(every_row.local_changes(scope, mask)) for scope, _, mask in requests]
        probes = choose_probes(candidates, changes)
        probe_kl = {i: first_batch.cost(*requests[i][::2]) for i in probes.values()}
    expected = [probe_kl[probes[c.family]] * change / first[probes[c.family]] / 2 if c.family in probes else 0.0
                for c, change in zip(candidates, changes)]
    in_memory, _ = _local_table(model, CostMeter, rows, probe_rows=2)
    assert in_memory[: len(requests)] == pytest.approx(expected, rel=1e-5, abs=1e-8)
    sweep, _ = _local_table(model, SweepCostMeter, rows, probe_rows=2)
    assert sweep == pytest.approx(in_memory, rel=1e-4, abs=1e-7)


def test_probes_on_every_row_are_the_default_numbers(calibration):
    model = make_model("llama", num_hidden_layers=4)
    assert _local_table(model, SweepCostMeter, calibration[:4], probe_rows=4) == \
        _local_table(model, SweepCostMeter, calibration[:4])


def test_probe_rows_are_refused_without_local_costs_and_beyond_the_search_rows():
    from hf_prune.errors import ConfigError

    with pytest.raises(ConfigError, match="add --search-costs local"):
        search_config(search_probe_rows=1)
    with pytest.raises(ConfigError, match="more than --search-rows"):
        search_config(search_costs="local", search_probe_rows=3)
    assert search_config(search_costs="local", search_probe_rows=1).search.probe_rows == 1


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_the_change_of_a_scope_that_ends_its_layer_is_read_off_its_consumer(calibration, family):
    """The MLP is the last thing a decoder layer adds to the residual stream: the change of the layer's output is the
    change of down_proj's output, compensated or not — the same numbers as running the whole layer."""
    import dataclasses

    model = make_model(family, num_hidden_layers=3)
    scopes, requests, mask = _requests(model)
    ending = [(scope, m) for scope, _, m in requests if scope.ends_layer]
    assert ending and all(scope.kind == "mlp" for scope, _ in ending)
    compensation = TemporaryCompensation(model, scopes, CalibrationStatistics(), COMPENSATIONS["lstsq"]())
    from hf_prune.calibration.statistics import collect_channel_statistics

    compensation.stats = collect_channel_statistics(model, scopes, calibration[4:], batch_size=2, gram=True)
    with CostMeter(model, get_adapter(model), scopes, calibration[:4], 2, compensation) as meter:
        meter.set_base({})
        meter.set_base({scopes[3].name: mask(scopes[3], scopes[3].num_groups // 2)})
        changes = []
        for scope, m in ending:
            shortcut = meter.local_changes(scope, m)
            whole_layer = meter.local_changes(dataclasses.replace(scope, ends_layer=False), m)
            assert shortcut == pytest.approx(whole_layer, rel=1e-4, abs=1e-6)
            changes.append(sum(shortcut))
    assert sum(change > 0 for change in changes) == len(changes) - 1  # all but the plan's own width
