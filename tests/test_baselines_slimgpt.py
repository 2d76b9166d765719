"""eval/baselines/slimgpt.py: SlimGPT's structured OBS on tiny random models.

The OBS algebra is checked against closed forms written here (the least-squares optimum with the removed columns
zeroed, and brute-force group errors), the pipeline against a direct recomputation of every kept weight from the
pruned prefix's activations; plus the budget, the ratio schedule, an unchanged input model, and a returned model
that is exactly hf-prune's surgery on the plan with the returned weights.
"""

from __future__ import annotations

import copy
import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

from hf_prune.adapters import get_adapter, prunable_parameters
from hf_prune.testing import make_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "eval"))
from baselines import common, slimgpt

FAMILIES = ("llama", "qwen3")
DAMP = 0.01


@pytest.fixture(scope="module")
def calibration():
    return torch.randint(0, 256, (6, 16), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request):
    model = make_tiny_model(request.param, num_hidden_layers=4)
    adapter = get_adapter(model)
    return model, adapter.scopes(model), adapter.decoder_layers(model)


_RUNS: dict = {}


def pruned(setup, calibration, sparsity):
    """One SlimGPT run per (model, sparsity), shared by the tests."""
    model, scopes, layers = setup
    key = (id(model), sparsity)
    if key not in _RUNS:
        _RUNS[key] = slimgpt.slimgpt_prune(model, scopes, layers, calibration, sparsity, batch_size=2, damp=DAMP)
    return _RUNS[key]


def damped_hessian(x: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """2 X Xᵀ / tokens + damp * mean(diag) I, from x: [tokens, channels]."""
    h = 2 * x.T.double() @ x.double() / x.shape[0]
    return h + damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=torch.float64)


def least_squares(w: torch.Tensor, h: torch.Tensor, kept_columns: torch.Tensor) -> torch.Tensor:
    """argmin over W' with only ``kept_columns`` nonzero of tr((W - W') H (W - W')ᵀ): W'_K = W H_:,K H_KK⁻¹."""
    k = kept_columns
    return torch.linalg.solve(h[k][:, k], (w @ h[:, k]).T).T


# ------------------------------------------------------------------------------------------ OBS algebra


def test_one_column_is_the_closed_form_obs_update():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(40, 7, generator=g, dtype=torch.float64)
    h = damped_hessian(x)
    hinv = torch.linalg.inv(h)
    for q in range(7):
        ours, work = w.clone(), hinv.clone()
        slimgpt.remove_columns(ours, work, torch.tensor([q]))
        expected = w - torch.outer(w[:, q], hinv[q, :]) / hinv[q, q]  # W - W[:,q] H⁻¹_q,: / H⁻¹_qq
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
        assert ours[:, q].abs().max() == 0
        keep = torch.tensor([j for j in range(7) if j != q])
        torch.testing.assert_close(ours[:, keep], least_squares(w, h, keep), rtol=1e-9, atol=1e-9)
    # the greedy choice is the column whose least-squares removal costs least, with cost w²/[H⁻¹]_qq
    errors = slimgpt.group_errors(w, hinv, torch.arange(7), 1)
    brute = []
    for q in range(7):
        keep = torch.tensor([j for j in range(7) if j != q])
        d = torch.zeros_like(w)
        d[:, keep] = least_squares(w, h, keep)
        brute.append(torch.trace((w - d) @ h @ (w - d).T))
    torch.testing.assert_close(errors, torch.stack(brute), rtol=1e-9, atol=1e-9)
    removed, _ = slimgpt.obs_prune(w.clone(), hinv.clone(), 1, [1])
    assert removed == [int(torch.argmin(torch.stack(brute)))]


def test_grouped_cholesky_head_errors_and_greedy_heads():
    """Head error from the batched Cholesky of H⁻¹'s diagonal blocks = the least-squares cost of removing the
    head's whole column block; removing heads greedily ends at the least-squares optimum of the kept columns."""
    g = torch.Generator().manual_seed(1)
    block, heads = 3, 5
    w = torch.randn(6, block * heads, generator=g, dtype=torch.float64)
    x = torch.randn(60, block * heads, generator=g, dtype=torch.float64) @ torch.randn(block * heads, block * heads,
                                                                                       generator=g, dtype=torch.float64)
    h = damped_hessian(x)
    hinv = torch.linalg.inv(h)
    brute = []
    for head in range(heads):
        keep = torch.tensor([j for j in range(block * heads) if j // block != head])
        d = torch.zeros_like(w)
        d[:, keep] = least_squares(w, h, keep)
        brute.append(torch.trace((w - d) @ h @ (w - d).T))
    errors = slimgpt.group_errors(w, hinv, torch.arange(heads), block)
    torch.testing.assert_close(errors, torch.stack(brute), rtol=1e-9, atol=1e-9)

    ours = w.clone()
    removed, _ = slimgpt.obs_prune(ours, hinv.clone(), block, [1, 1])
    assert removed[0] == int(torch.argmin(torch.stack(brute)))
    keep = torch.tensor([j for j in range(block * heads) if j // block not in removed])
    torch.testing.assert_close(ours[:, keep], least_squares(w, h, keep), rtol=1e-9, atol=1e-9)
    assert ours[:, [j for j in range(block * heads) if j // block in removed]].abs().max() == 0
    # the second head is the greedy choice given the first one removed
    second = {}
    for head in set(range(heads)) - {removed[0]}:
        keep = torch.tensor([j for j in range(block * heads) if j // block not in (removed[0], head)])
        d = torch.zeros_like(w)
        d[:, keep] = least_squares(w, h, keep)
        second[head] = float(torch.trace((w - d) @ h @ (w - d).T))
    assert removed[1] == min(second, key=second.get)


def test_dynamic_group_size_shrinks_and_stays_exact():
    assert slimgpt.dynamic_group_sizes(538) == [269, 135, 67, 34, 17, 8, 4, 2, 1, 1]
    for n in range(1, 40):
        sizes = slimgpt.dynamic_group_sizes(n)
        assert sum(sizes) == n and sizes == sorted(sizes, reverse=True) and sizes[-1] == 1
    assert slimgpt.dynamic_group_sizes(0) == []
    g = torch.Generator().manual_seed(2)
    w, x = torch.randn(4, 20, generator=g, dtype=torch.float64), torch.randn(80, 20, generator=g, dtype=torch.float64)
    h = damped_hessian(x)
    for steps in (slimgpt.dynamic_group_sizes(9), [1] * 9):
        ours = w.clone()
        removed, _ = slimgpt.obs_prune(ours, torch.linalg.inv(h), 1, steps)
        assert len(set(removed)) == 9
        keep = torch.tensor(sorted(set(range(20)) - set(removed)))
        torch.testing.assert_close(ours[:, keep], least_squares(w, h, keep), rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------- ratio schedule


@pytest.mark.parametrize("n, sparsity, first", [(30, 0.35, 0.0), (4, 0.35, 0.0), (24, 0.2, 0.05), (32, 0.5, 0.1)])
def test_incremental_ratio_schedule(n, sparsity, first):
    ratios = slimgpt.incremental_ratios(n, sparsity, first)
    assert sum(ratios) / n == pytest.approx(sparsity, abs=1e-12)
    assert ratios[0] == pytest.approx(first)
    assert all(b > a for a, b in itertools.pairwise(ratios))  # increases with depth
    for i, r in enumerate(ratios):  # logarithmically: r_i = r_0 + (r_last - r_0) log(i+1) / log(n)
        assert r == pytest.approx(first + (ratios[-1] - first) * math.log(i + 1) / math.log(n), abs=1e-12)
    assert slimgpt.incremental_ratios(30, 0.35)[-1] == pytest.approx(0.478, abs=1e-3)
    assert slimgpt.incremental_ratios(1, 0.35) == [0.35]


# ------------------------------------------------------------------------------------------ the method


@pytest.mark.parametrize("sparsity", (0.2, 0.35, 0.5))
def test_budget_schedule_and_input_unchanged(setup, calibration, sparsity):
    model, scopes, layers = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out, plan = pruned(setup, calibration, sparsity)
    assert out is not model
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    target = sparsity * prunable_parameters(model, scopes)
    neuron = max(s.params_per_group(model) for s in scopes if s.kind == "mlp")
    assert abs(common.removed_params(model, scopes, plan) - target) <= neuron  # within one neuron, in all
    for s in scopes:
        kept = plan.kept[s.name]
        assert kept == sorted(set(kept)) and 1 <= len(kept) <= s.num_groups and kept[-1] < s.num_groups
        assert s.num_groups - len(kept) == plan.details["removed"][s.name]
    for kind in ("attention", "mlp"):  # the schedule's counts grow with depth, layer 0 left whole (r_0 = 0)
        counts = [plan.details["removed"][s.name] for s in scopes if s.kind == kind]
        assert counts == sorted(counts) and counts[0] == 0
    assert sum(plan.details["ratios"]) / len(layers) == pytest.approx(sparsity)


@pytest.mark.parametrize("sparsity", (0.35,))
def test_returned_model_is_surgery_plus_obs_weights(setup, calibration, sparsity):
    model, scopes, _ = setup
    out, plan = pruned(setup, calibration, sparsity)
    cut = common.materialize(model, scopes, plan)  # the plan's groups cut from the *original* weights
    ids = calibration[:2]
    with torch.no_grad():
        plain = cut(ids).logits
    consumers = {s.consumer.path for s in scopes}
    out_params = dict(out.named_parameters())
    for name, param in cut.named_parameters():
        if name.rsplit(".", 1)[0] not in consumers or name.endswith("bias"):
            assert torch.equal(param, out_params[name]), name  # everything else: surgery on the original weights
    for path in consumers:
        with torch.no_grad():
            cut.get_submodule(path).weight.copy_(out.get_submodule(path).weight)
    with torch.no_grad():
        assert (cut(ids).logits - out(ids).logits).abs().max() < 1e-5
        assert (plain - out(ids).logits).abs().max() > 1e-3  # the OBS update did change the model


def _replace(model, path, module):
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def _inputs_at(model, path, ids):
    seen = []
    handle = model.get_submodule(path).register_forward_pre_hook(
        lambda m, a: seen.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(ids)
    handle.remove()
    return torch.cat(seen)


def test_kept_weights_are_least_squares_on_the_pruned_prefix(setup, calibration):
    """Every kept consumer weight = W H_:,K H_KK⁻¹ with H from the *pruned* model's own activations: the earlier
    layers pruned and updated, and for the MLP this layer's attention too (recomputed here, not from our code)."""
    model, scopes, _ = setup
    out, plan = pruned(setup, calibration, 0.35)
    checked = 0
    for s in scopes:
        removed = sorted(set(range(s.num_groups)) - set(plan.kept[s.name]))
        if not removed:
            continue
        probe = copy.deepcopy(out)  # the pruned model, with this scope's sublayer back to the original (full width)
        _replace(probe, s.sublayer, copy.deepcopy(model.get_submodule(s.sublayer)))
        h = damped_hessian(_inputs_at(probe, s.consumer.path, calibration))
        kept_columns = (torch.tensor(plan.kept[s.name])[:, None] * s.consumer.block
                        + torch.arange(s.consumer.block)).reshape(-1)
        expected = least_squares(model.get_submodule(s.consumer.path).weight.double(), h, kept_columns)
        torch.testing.assert_close(out.get_submodule(s.consumer.path).weight.double(), expected, rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked >= 4
