"""LLM-Pruner, block-wise, first-order Taylor on the grouped structure, without recovery (LoRA) tuning.

Ma et al., "LLM-Pruner: On the Structural Pruning of Large Language Models", NeurIPS 2023, arXiv
2305.11627: the method section's grouped importance estimation (element-wise first-order term
|w · ∂L/∂w|, aggregated over the coupled structure). Code followed: ``horseee/LLM-Pruner``
``llama3.py`` (the GQA entry point; ``hf_prune.py`` is the same for LLaMA-1/2) with the README's
block-wise command, and ``LLMPruner/pruner/hf_llama_pruner.py`` ``TaylorImportance``:

- ``--pruner_type taylor --taylor param_first``: salience = ``w * w.grad`` per weight; a row / column's
  importance is ``salience.abs().sum(...)`` (absolute value *per weight*, then summed); the coupled
  layers of a group are combined by ``--grouping_strategy sum``.
- The gradient is of one LM loss on ``--num_examples 10`` calibration sequences (64 tokens each).
- ``--block_wise --block_attention_layer_start 4 --block_attention_layer_end 30`` (same for MLP) on
  32-layer LLaMA: the first 4 and the last 2 layers are not pruned; every pruned layer loses the same
  ratio of KV heads (``consecutive_groups`` = head_dim on ``k_proj``) and of MLP channels
  (``MetaPruner.prune_local``: ``n_pruned = C - int(C * (1 - ratio))``, heads = ``n_pruned // head_dim``).

Differences, and why:
- Skipped layers scale with depth: the first ``round(4/32 * L)`` and last ``round(2/32 * L)`` layers
  are kept whole (4 and 2 of SmolLM2's 30). The ratio inside the pruned layers is raised so that the
  removed share of *all* prunable parameters is the budget, as their "pruning ratio 0.25 ≈ 20% of
  parameters" works.
- The group is defined by hf-prune's adapter — a KV group (q/k/v rows and ``o_proj`` columns of the
  query heads that share the KV head) or an MLP neuron (gate/up rows, ``down_proj`` column) — rather
  than derived by their vendored Torch-Pruning dependency graph, which we did not run.
- ``match_budget=True`` sets the per-layer neuron count so the total meets the budget after the head
  rounding (see ``common.fill_mlp_to_budget``); ``False`` applies their rule to both.
- The loss is averaged over all calibration rows (the project's shared tokens), in batches whose
  gradients are summed before the absolute value is taken — the same gradient as one big batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hf_prune.adapters import PrunableScope
from hf_prune.errors import BudgetError
from hf_prune.plan.importance import top_groups

from .common import BaselinePlan, check_kept_count, fill_mlp_to_budget

LLAMA7B_LAYERS, SKIP_FIRST, SKIP_LAST = 32, 4, 2


def pruned_layer_range(num_layers: int) -> range:
    """Layers LLM-Pruner's block-wise setting prunes, scaled from LLaMA-7B's 4..29 of 32."""
    start = round(SKIP_FIRST * num_layers / LLAMA7B_LAYERS)
    end = num_layers - round(SKIP_LAST * num_layers / LLAMA7B_LAYERS)
    return range(start, end)


def elementwise_taylor_gradients(model: nn.Module, scopes: Sequence[PrunableScope], calibration: torch.Tensor,
                                 batch_size: int = 1) -> dict[str, torch.Tensor]:
    """∂L/∂W of every Linear the scopes cut, L = mean LM loss over all calibration rows."""
    weights = {piece.path: model.get_submodule(piece.path).weight for scope in scopes for piece in scope.slices}
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for weight in weights.values():
        weight.requires_grad_(True)
        weight.grad = None
    batches = calibration.split(batch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for batch in batches:
                batch = batch.to(device)
                loss = model(batch, labels=batch, use_cache=False).loss * (batch.shape[0] / calibration.shape[0])
                loss.backward()
        grads = {path: weight.grad.detach().clone() for path, weight in weights.items()}
    finally:
        for weight in weights.values():
            weight.grad = None
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return grads


def taylor_group_scores(model: nn.Module, scope: PrunableScope, grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ over the group's weights of |w · g| (``param_first``, grouping strategy ``sum``)."""
    total = torch.zeros(scope.num_groups, dtype=torch.float64)
    for piece in scope.slices:
        weight = model.get_submodule(piece.path).weight.detach().to(torch.float64)
        salience = (weight * grads[piece.path].to(torch.float64)).abs().sum(dim=1 - piece.dim)
        total += scope.sum_per_group(salience, piece).cpu()
    return total


def removed_by_ratio(scope: PrunableScope, ratio: float) -> int:
    """``MetaPruner.prune_local``: channels ``C - int(C * (1 - ratio))``; for attention C counts
    ``k_proj`` output channels (the root) and whole heads of ``head_dim`` channels are removed."""
    block = min(piece.block for piece in scope.producers)  # k_proj's head_dim (1 for a neuron)
    channels = scope.num_groups * block
    return (channels - int(channels * (1.0 - ratio))) // block


def llm_pruner_plan(
    model: nn.Module, scopes: Sequence[PrunableScope], calibration: torch.Tensor, sparsity: float,
    *, batch_size: int = 1, layers: range | None = None, match_budget: bool = True,
    grads: dict[str, torch.Tensor] | None = None,
) -> BaselinePlan:
    """LLM-Pruner's block-wise plan at ``sparsity`` (share of *all* prunable parameters removed).

    ``grads`` (from :func:`elementwise_taylor_gradients` on the same rows) may be passed to plan
    several budgets from one backward pass."""
    num_layers = max(scope.layer for scope in scopes) + 1
    layers = layers if layers is not None else pruned_layer_range(num_layers)
    selected = [scope for scope in scopes if scope.layer in layers]
    cost = {s.name: s.params_per_group(model) for s in scopes}
    total = sum(s.num_groups * cost[s.name] for s in scopes)
    ratio = sparsity * total / sum(s.num_groups * cost[s.name] for s in selected)
    if ratio >= 1.0:
        raise BudgetError(f"LLM-Pruner block-wise cannot remove {sparsity:.0%}: layers {layers.start}..{layers.stop - 1} "
                          f"would need {ratio:.0%} of their groups removed")
    remove = {s.name: removed_by_ratio(s, ratio) for s in selected}
    if match_budget:
        attention_removed = sum(remove[s.name] * cost[s.name] for s in selected if s.kind == "attention")
        remove.update(fill_mlp_to_budget(model, scopes, attention_removed, sparsity,
                                         [s for s in selected if s.kind == "mlp"]))
    if grads is None:
        grads = elementwise_taylor_gradients(model, selected, calibration, batch_size)
    scores = {s.name: taylor_group_scores(model, s, grads) for s in selected}
    kept = {s.name: top_groups(scores[s.name], check_kept_count(s, s.num_groups - remove[s.name])) for s in selected}
    return BaselinePlan("llm-pruner", kept, details={"ratio_in_pruned_layers": ratio, "layers": [layers.start, layers.stop],
                                                     "match_budget": match_budget, "scores": scores})
