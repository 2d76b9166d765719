"""Hyperflux: gates, scheduler, projection, training on a problem with a known answer, resume."""

import pytest
import torch

from hf_prune.adapters import get_adapter
from hf_prune.config import HyperfluxOptions, RunStateOptions
from hf_prune.cut.masks import GroupMasks
from hf_prune.plan.hyperflux import (
    GateSet,
    HyperfluxTrainer,
    PressureScheduler,
    TargetTrajectory,
    hard_gate,
    project_to_budget,
)

from .conftest import make_model


def test_hard_gate_forward_is_binary_and_backward_is_straight_through():
    logits = torch.tensor([-0.3, 0.0, 0.2], requires_grad=True)
    gate = hard_gate(logits)
    assert gate.tolist() == [0.0, 1.0, 1.0]
    (gate * torch.tensor([2.0, -1.0, 5.0])).sum().backward()
    assert logits.grad.tolist() == [2.0, -1.0, 5.0]


def self_generated_rows(model, rows=8, length=24, seed=0):
    """Text the model itself finds likely: removing what it relies on raises the loss on it."""
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (rows, 2), generator=generator)
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.generate(prompt, max_new_tokens=length - 2, do_sample=True, temperature=0.7,
                              pad_token_id=0, attention_mask=torch.ones_like(prompt))


def test_gate_gradient_is_the_flux_of_the_group():
    """d loss / d logit under the straight-through gate equals d loss / d (scale of the group's output)."""
    model = make_model("llama")
    scopes = get_adapter(model).scopes(model)
    rows = self_generated_rows(model, rows=2)
    gates = GateSet(scopes, {s.name: s.params_per_group(model) for s in scopes})
    gates.init_uniform(generator=torch.Generator().manual_seed(0))
    with torch.enable_grad(), gates.masks(model):
        model(rows, labels=rows).loss.backward()
    scales = {s.name: torch.ones(s.num_groups, requires_grad=True) for s in scopes}
    with torch.enable_grad(), GroupMasks(model, scopes, scales):
        model(rows, labels=rows).loss.backward()
    for scope in scopes:
        torch.testing.assert_close(gates.logits[GateSet.key(scope)].grad, scales[scope.name].grad)


def test_pressure_term_weights_gates_by_the_parameters_they_remove():
    model = make_model("qwen2")
    scopes = get_adapter(model).scopes(model)[:2]
    costs = {s.name: s.params_per_group(model) for s in scopes}
    gates = GateSet(scopes, costs)
    with torch.no_grad():
        for scope in scopes:
            gates.logits[GateSet.key(scope)].fill_(1.0)
    gates.pressure_term().backward()
    total = sum(s.num_groups * costs[s.name] for s in scopes)
    for scope in scopes:
        expected = torch.full((scope.num_groups,), costs[scope.name] / total)
        torch.testing.assert_close(gates.logits[GateSet.key(scope)].grad, expected)
    assert gates.density() == 1.0


def test_target_trajectory_starts_at_one_and_reaches_the_target():
    curve = TargetTrajectory(target_density=0.35, ticks=40)
    values = [curve.at(t) for t in range(41)]
    assert values[0] == 1.0
    assert values[-1] == pytest.approx(0.35, abs=1e-6)
    assert all(a > b for a, b in zip(values, values[1:]))
    assert curve.at(100) == values[-1]
    drops = [a - b for a, b in zip(values, values[1:])]
    assert drops[0] > drops[-1], "large removals early, a gentle approach late"


def test_controller_raises_pressure_above_the_curve_and_lowers_it_below():
    scheduler = PressureScheduler(TargetTrajectory(0.5, 10), step=0.15, exponent=2.0)
    scheduler.tick(density=1.0)
    scheduler.tick(density=1.0)
    assert scheduler.state.gamma == pytest.approx(0.15 + 0.15 + 0.15 / 4)  # step plus growing integral
    assert scheduler.pressure == pytest.approx(scheduler.state.gamma**2)
    wound_up = scheduler.state.gamma
    scheduler.tick(density=0.0)  # the error changed sign: anti-windup halves gamma before the step down
    assert scheduler.state.gamma == pytest.approx(wound_up / 2 - 0.15)
    scheduler.tick(density=0.0)  # still below: an ordinary step (plus integral), no second halving
    assert scheduler.state.gamma == pytest.approx(max(0.0, wound_up / 2 - 0.15 - 0.15 - 0.15 / 4))
    for _ in range(10):
        scheduler.tick(density=0.0)
    assert scheduler.state.gamma == 0.0  # clipped at zero
    restored = PressureScheduler(TargetTrajectory(0.5, 10))
    restored.load_state_dict(scheduler.state_dict())
    assert restored.state == scheduler.state


def test_projection_keeps_exactly_the_budget_and_one_group_per_scope():
    model = make_model("mistral")
    scopes = get_adapter(model).scopes(model)
    costs = {s.name: s.params_per_group(model) for s in scopes}
    generator = torch.Generator().manual_seed(0)
    logits = {s.name: torch.randn(s.num_groups, generator=generator) for s in scopes}
    logits[scopes[0].name] = torch.full((scopes[0].num_groups,), -5.0)  # a scope the gates all closed
    total = sum(s.num_groups * costs[s.name] for s in scopes)
    budget = 0.6 * total
    plan = project_to_budget(scopes, logits, costs, budget)
    kept = sum(len(plan[s.name]) * costs[s.name] for s in scopes)
    assert kept <= budget
    assert budget - kept < min(costs.values()), "no further group would have fitted"
    assert all(len(plan[s.name]) >= 1 for s in scopes)
    # the MLP scopes (equal, small costs) are filled strictly by logit: a dropped neuron never outranks a kept one
    for scope in [s for s in scopes[1:] if s.kind == "mlp"]:
        kept_logits = [float(logits[scope.name][i]) for i in plan[scope.name]]
        dropped = [float(logits[scope.name][i]) for i in range(scope.num_groups) if i not in plan[scope.name]]
        assert not dropped or not kept_logits or max(dropped) <= min(kept_logits)
        assert plan[scope.name] == sorted(plan[scope.name])


def toy_problem(seed=0):
    """A model whose odd MLP neurons carry (almost) nothing: their down_proj columns are scaled by 1e-3."""
    model = make_model("llama", num_hidden_layers=2, seed=seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, 1::2] *= 1e-3
            layer.mlp.down_proj.weight[:, 0::2] *= 3.0
    scopes = [s for s in get_adapter(model).scopes(model) if s.kind == "mlp"]
    costs = {s.name: s.params_per_group(model) for s in get_adapter(model).scopes(model)}
    return model, scopes, costs


def test_gates_find_the_groups_that_matter():
    model, scopes, costs = toy_problem()
    rows = self_generated_rows(model, rows=16, length=24)
    budget = sum(s.num_groups // 2 * costs[s.name] for s in scopes)  # room for exactly the useful half
    options = HyperfluxOptions(steps=100, regrowth_steps=30, tick_every=5, gate_lr=0.02)
    result = HyperfluxTrainer(model, scopes, costs, budget, rows, options, batch_size=2).run()
    for scope in scopes:
        kept = set(result.plan[scope.name])
        useful = set(range(0, scope.num_groups, 2))
        assert len(kept & useful) >= 0.9 * len(useful), f"{scope.name} kept {len(kept & useful)} of {len(useful)}"
    assert result.trajectory[-1]["phase"] == "regrowth"
    pressure_ticks = [t for t in result.trajectory if t["phase"] == "pressure"]
    assert len(pressure_ticks) == 100 // 5 and max(t["gamma"] for t in pressure_ticks) > 0
    target = budget / sum(s.num_groups * costs[s.name] for s in scopes)
    assert abs(pressure_ticks[-1]["target"] - target) < 1e-6
    assert abs(pressure_ticks[-1]["density"] - target) < 0.1, "the scheduler brought the density to the target"


def run_toy(tmp_path, stop_at=None, resume=False, restart=False):
    model, scopes, costs = toy_problem()
    rows = self_generated_rows(model, rows=8, length=16)
    budget = 0.6 * sum(s.num_groups * costs[s.name] for s in scopes)
    options = HyperfluxOptions(steps=40, regrowth_steps=10, tick_every=5, gate_lr=0.02, checkpoint_every=10)
    state = RunStateOptions(dir=str(tmp_path / "state"), resume=resume, restart=restart)
    trainer = HyperfluxTrainer(model, scopes, costs, budget, rows, options, batch_size=2, state=state)

    def interrupt(step):
        if stop_at is not None and step == stop_at:
            raise KeyboardInterrupt  # as if the process were killed right after this step

    return trainer.run(on_step_end=interrupt)


def test_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path):
    uninterrupted = run_toy(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run_toy(tmp_path / "b", stop_at=27)  # last snapshot at step 20: steps 21..27 are lost
    assert (tmp_path / "b" / "state" / "hyperflux_state.json").is_file()
    resumed = run_toy(tmp_path / "b", resume=True)
    assert resumed.plan == uninterrupted.plan
    for name, logits in uninterrupted.logits.items():
        assert torch.equal(resumed.logits[name], logits)
    assert resumed.trajectory == uninterrupted.trajectory
    assert not (tmp_path / "b" / "state").exists(), "a finished run leaves no state behind"


def test_a_restarted_run_resumes_without_restart(tmp_path):
    """--restart only says what to do with an old state: the run it starts resumes like any other."""
    uninterrupted = run_toy(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run_toy(tmp_path / "b", stop_at=12)
    with pytest.raises(KeyboardInterrupt):
        run_toy(tmp_path / "b", stop_at=27, restart=True)  # discards the step-10 state, starts from step 0
    resumed = run_toy(tmp_path / "b", resume=True)
    assert resumed.plan == uninterrupted.plan and resumed.trajectory == uninterrupted.trajectory


def test_resume_refuses_another_runs_state(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_toy(tmp_path, stop_at=12)
    model, scopes, costs = toy_problem(seed=1)
    rows = self_generated_rows(model, rows=8, length=16, seed=1)
    options = HyperfluxOptions(steps=40, tick_every=5)
    state = RunStateOptions(dir=str(tmp_path / "state"), resume=True)
    from hf_prune.errors import ConfigError

    with pytest.raises(ConfigError, match="belongs to a run with other options"):
        HyperfluxTrainer(model, scopes, costs, 1000.0, rows, options, state=state).run()


def short_run(batch_size=1, **overrides):
    model, scopes, costs = toy_problem()
    rows = self_generated_rows(model, rows=8, length=16)
    budget = 0.6 * sum(s.num_groups * costs[s.name] for s in scopes)
    options = HyperfluxOptions(**{"steps": 10, "regrowth_steps": 0, "tick_every": 5, "gate_lr": 0.02, **overrides})
    return HyperfluxTrainer(model, scopes, costs, budget, rows, options, batch_size=batch_size).run()


def test_gradient_accumulation_equals_a_larger_batch():
    """Two micro-batches of 2 rows and one batch of 4 rows give the same gate updates."""
    accumulated = short_run(batch_size=2, grad_accum=2)
    whole = short_run(batch_size=4, grad_accum=1)
    for name, logits in whole.logits.items():
        torch.testing.assert_close(accumulated.logits[name], logits, rtol=0, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gates():
    plain = short_run(batch_size=2)
    checkpointed = short_run(batch_size=2, gradient_checkpointing=True)
    for name, logits in plain.logits.items():
        torch.testing.assert_close(checkpointed.logits[name], logits, rtol=0, atol=1e-5)
