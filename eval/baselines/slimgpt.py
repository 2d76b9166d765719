"""SlimGPT (Ling et al., "SlimGPT: Layer-wise Structured Pruning for Large Language Models", NeurIPS 2024,
arXiv 2412.18110), re-implemented on hf-prune's scopes: structured Optimal Brain Surgeon, layer by layer on the
pruned prefix, with the weights of the surviving columns updated to compensate.

Sources. No official code is published (none is linked from the paper or found in the project's search corpora).
What could be read here is the abstract, third-party summaries of the method section and figures (Figure 1:
"reorders columns of W and H⁻¹, performs a grouped Cholesky decomposition, prunes columns based on the
calculated errors, then restores the columns and compensates"; Table 5's ablations "-DGS" / "-GCD"; Table 6's
ratio schedules) and a third-party quotation of the paper's Eq. 6. The rest is written from the paper's method
as described there and from the OBS / SparseGPT / GPTQ algebra it builds on; constants the paper sets that could
not be read (its first-layer ratio, its group-size schedule) are named below with the value used here.

Followed, step for step:

1. **Layer-wise, on the pruned prefix.** The first decoder layer's inputs are captured once; then for each layer
   in turn the calibration batches are run through it, its scopes are pruned, and its (pruned, updated) output
   becomes the next layer's input. Within a layer the attention is pruned first and the MLP's statistics are
   taken on the output of the already pruned attention (GPTQ/SparseGPT's "true sequential" order).
2. **Hessian** of each consumer (``o_proj`` for attention, ``down_proj`` for the MLP) over the calibration tokens
   at its input: ``H = 2 X Xᵀ / tokens``, dampened by ``damp * mean(diag H)`` on the diagonal (SparseGPT's
   ``percdamp``), inverted in float64 through its Cholesky factor.
3. **OBS error and update.** Removing a set Q of input columns (W: [out, in]) costs
   ``tr(W_:,Q [H⁻¹]_QQ⁻¹ W_:,Qᵀ)`` (for one column ``||W_:,q||² / [H⁻¹]_qq``), and the optimal change of the
   others is ``δW = −W_:,Q [H⁻¹]_QQ⁻¹ [H⁻¹]_Q,:``; H⁻¹ then loses Q by the same Schur complement, so the next
   step's errors are those of the updated weights. The result after any sequence of removals is the least-squares
   optimum ``W'_K = W H_:,K H_KK⁻¹`` for the surviving columns K (tested).
4. **Batched Greedy Pruning, heads (grouped Cholesky).** A head's error is the OBS error of its whole column
   block, i.e. the sum over its columns of the sequential (GPTQ-order) column errors inside the head. The paper
   gets these for all heads at once by re-ordering the columns head by head and taking the Cholesky factor of
   each head's diagonal block of H⁻¹; here: one batched ``cholesky`` of the ``[groups, block, block]`` diagonal
   blocks of H⁻¹ and ``error_g = ||L_g⁻¹ W_:,Q_gᵀ||²`` — the same number. The head with the smallest error is
   removed with the group OBS update (the paper's column-by-column update in the re-ordered matrix, then
   restoring the order, is the same update), the errors of the remaining heads are recomputed, and so on.
5. **Batched Greedy Pruning, FFN (Dynamic Group Size).** Neurons (one column of ``down_proj`` each) are ranked by
   their OBS column error and removed in groups of the lowest-error columns, each group with one exact group-OBS
   update, the errors recomputed after every group; the group size shrinks as pruning proceeds (large groups
   while the cheap columns go, single columns at the end, where the choice matters most). The paper's exact
   schedule could not be read; here each step removes half of what is left to remove, rounded up
   (538 neurons: 269, 135, 67, 34, 17, 8, 4, 2, 1, 1 — ten updates instead of 538). ``dynamic_group_size=False``
   removes one neuron per step (fully greedy OBS, the reference the paper approximates).
6. **Incremental Pruning Ratio** (Eq. 6): layer i of n removes ``r_i = r_0 + (r_{n-1} − r_0) log(i + 1) / log(n)``
   of its heads and of its neurons — increasing with depth, logarithmically, since an early layer's error is
   inherited by every later one (their Table 6: log-increase beats linear-increase, uniform and the decreasing
   schedules). ``r_{n-1}`` is solved so that the mean over layers is the target. The paper's ``r_0`` could not be
   read; ``first_ratio`` sets it, default 0 (the first layer is left whole).

Where this differs, and why:

- GQA: the attention unit is hf-prune's KV group (one KV head with its ``n_rep`` query heads, ``n_rep * head_dim``
  columns of ``o_proj``), not a single head: removing one query head of a group does not remove anything from
  ``k_proj``/``v_proj``. On LLaMA-7B (MHA) the two coincide.
- Budget: the parameter share of a head and a neuron differ, and with 3-9 KV groups per layer the head count
  rounds hard. Heads: each layer removes ``round(r_i * groups)`` KV groups (half up; at most all but one). Neurons:
  the schedule's counts ``r_i * neurons`` are scaled by one common factor so that, with the attention parameters
  already removed, the total is the requested share of the prunable parameters, then rounded by largest remainder
  (at most all but one per layer; a capped layer's excess goes to the others) — the non-uniform counterpart of
  ``common.fill_mlp_to_budget``. The achieved share is within one neuron of the target when MLP scopes are alike.
- Heads are re-scored after every removal (fully greedy). With at most 9 KV groups per layer here this costs
  nothing; whether the paper re-scores after each head or removes the selected heads in one batch could not be
  read (with one head per step both give the same first choice).
- The pruned model is returned: the plan's ``kept`` alone (e.g. through ``common.materialize``) lacks the OBS
  weight updates, which are half of the method.
- Calibration text: the project's shared calibration rows instead of their C4 samples.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from hf_prune.adapters import PrunableScope, prunable_parameters
from hf_prune.calibration.statistics import first_layer_inputs
from hf_prune.cut.surgery import apply_plan, block_indices

from .common import BaselinePlan, run_layer

# ------------------------------------------------------------------------------------- incremental ratio


def incremental_ratios(num_layers: int, sparsity: float, first_ratio: float = 0.0) -> list[float]:
    """Eq. 6: ``r_i = r_0 + (r_last - r_0) * log(i + 1) / log(n)``, ``r_last`` chosen so the mean is ``sparsity``.
    Ratios are clipped to [0, 1] (only reached above ~73% with ``r_0 = 0``; the budget fill makes up the rest)."""
    if not 0.0 <= first_ratio <= sparsity:
        raise ValueError(f"first_ratio must be within [0, sparsity]: {first_ratio} vs {sparsity}")
    if num_layers == 1:
        return [sparsity]
    shape = [math.log(i + 1) / math.log(num_layers) for i in range(num_layers)]
    last = first_ratio + (sparsity - first_ratio) / (sum(shape) / num_layers)
    return [min(1.0, max(0.0, first_ratio + (last - first_ratio) * f)) for f in shape]


def _largest_remainder(desired: list[float], caps: list[int], total: int) -> list[int]:
    """Integers ``<= caps`` summing to ``total`` (if the caps allow), each the floor or ceiling of ``desired``."""
    counts = [min(cap, math.floor(x)) for x, cap in zip(desired, caps)]
    order = sorted(range(len(desired)), key=lambda i: (-(desired[i] - math.floor(desired[i])), i))
    for i in order:
        if sum(counts) >= total:
            break
        if counts[i] < caps[i]:
            counts[i] += 1
    return counts


def removal_counts(model: nn.Module, scopes: Sequence[PrunableScope], ratios: Sequence[float],
                   sparsity: float) -> dict[str, int]:
    """Groups to remove per scope: ``round(r_i * groups)`` KV groups, neurons ∝ ``r_i * neurons`` scaled to meet
    the budget (see the module docstring). Every scope keeps at least one group."""
    cost = {s.name: s.params_per_group(model) for s in scopes}
    remove = {}
    for s in scopes:
        if s.kind != "mlp":
            remove[s.name] = min(s.num_groups - 1, math.floor(ratios[s.layer] * s.num_groups + 0.5))
    mlp = [s for s in scopes if s.kind == "mlp"]
    need = sparsity * prunable_parameters(model, list(scopes)) - sum(remove[n] * cost[n] for n in remove)
    caps = [s.num_groups - 1 for s in mlp]
    weights = [ratios[s.layer] * s.num_groups for s in mlp]
    if sum(weights) == 0:  # the schedule prunes no MLP (e.g. sparsity 0): fall back to the neuron counts
        weights = [float(s.num_groups) for s in mlp]
    desired = [0.0] * len(mlp)
    free = [i for i in range(len(mlp)) if weights[i] > 0]
    left = max(0.0, need)
    while free and left > 1e-9:  # water-filling: one factor for every uncapped layer, capped layers fixed at the cap
        scale = left / sum(weights[i] * cost[mlp[i].name] for i in free)
        over = [i for i in free if scale * weights[i] > caps[i]]
        if not over:
            for i in free:
                desired[i] = scale * weights[i]
            break
        for i in over:
            desired[i] = caps[i]
            left -= caps[i] * cost[mlp[i].name]
            free.remove(i)
    total = math.floor(sum(desired) + 0.5)
    for s, count in zip(mlp, _largest_remainder(desired, caps, total)):
        remove[s.name] = count
    return remove


# --------------------------------------------------------------------------------------------- OBS core


def inverse_hessian(gram: torch.Tensor, tokens: int, damp: float) -> torch.Tensor:
    """``(2 X Xᵀ / tokens + damp * mean(diag) * I)⁻¹`` in float64, from ``gram = Σ x xᵀ``."""
    hessian = 2.0 * gram.to(torch.float64) / max(tokens, 1)
    diag = hessian.diagonal()
    diag[diag == 0] = 1.0  # a channel that is always zero (SparseGPT's "dead" inputs)
    diag += damp * float(diag.mean())
    identity = torch.eye(hessian.shape[0], dtype=torch.float64, device=hessian.device)
    return torch.cholesky_solve(identity, torch.linalg.cholesky(hessian))  # cholesky_inverse: ~30x slower on CPU


def group_errors(weight: torch.Tensor, hinv: torch.Tensor, groups: torch.Tensor, block: int) -> torch.Tensor:
    """OBS error of removing each of ``groups`` (its ``block`` columns) alone: ``tr(W_Q [H⁻¹]_QQ⁻¹ W_Qᵀ)``, from
    one batched ("grouped") Cholesky of the groups' diagonal blocks of H⁻¹."""
    if block == 1:
        return weight[:, groups].pow(2).sum(dim=0) / hinv.diagonal()[groups]
    columns = groups[:, None] * block + torch.arange(block, device=groups.device)  # [g, b]
    blocks = hinv[columns[:, :, None], columns[:, None, :]]  # [g, b, b]
    lower = torch.linalg.cholesky(blocks)
    scaled = torch.linalg.solve_triangular(lower, weight[:, columns].permute(1, 2, 0), upper=False)  # L⁻¹ W_Qᵀ
    return scaled.pow(2).sum(dim=(1, 2))


def remove_columns(weight: torch.Tensor, hinv: torch.Tensor, columns: torch.Tensor) -> None:
    """Group OBS update, in place: ``W -= W_:,Q [H⁻¹]_QQ⁻¹ [H⁻¹]_Q,:`` and H⁻¹ loses Q (Schur complement)."""
    factor = torch.linalg.cholesky(hinv[columns][:, columns])
    solved = torch.cholesky_solve(hinv[columns, :], factor)  # [H⁻¹]_QQ⁻¹ [H⁻¹]_Q,:
    weight -= weight[:, columns] @ solved
    hinv -= hinv[:, columns] @ solved
    weight[:, columns] = 0.0
    hinv[columns, :] = 0.0
    hinv[:, columns] = 0.0


def dynamic_group_sizes(count: int) -> list[int]:
    """Dynamic Group Size: each step removes half of what is left, rounded up (large groups first, then 1)."""
    sizes = []
    while count > 0:
        sizes.append((count + 1) // 2)
        count -= sizes[-1]
    return sizes


def obs_prune(weight: torch.Tensor, hinv: torch.Tensor, block: int, steps: Sequence[int]) -> tuple[list[int], float]:
    """Greedy structured OBS on ``weight`` ([out, in], float64, updated in place) with ``hinv`` (consumed): at each
    step remove the ``steps[k]`` groups of ``block`` columns with the smallest OBS error, then update. Returns the
    removed groups in removal order and the sum of their errors as estimated when chosen."""
    alive = torch.arange(weight.shape[1] // block, device=weight.device)
    removed: list[int] = []
    error = 0.0
    for size in steps:
        errors = group_errors(weight, hinv, alive, block)
        order = torch.argsort(errors, stable=True)[:size]
        error += float(errors[order].sum())  # exact for one group; for several, their errors taken one by one
        pick = alive[order]
        remove_columns(weight, hinv, block_indices(pick.tolist(), block, device=weight.device))
        removed += pick.tolist()
        keep = torch.ones_like(alive, dtype=torch.bool)
        keep[order] = False
        alive = alive[keep]
    return removed, error


# ------------------------------------------------------------------------------------------------ method


def _gram(layer: nn.Module, consumer: nn.Linear, inputs: list[tuple[tuple, dict]]) -> tuple[torch.Tensor, int]:
    """Σ x xᵀ (float64) and the token count at ``consumer``'s input, running ``layer`` on every batch."""
    state = {"gram": torch.zeros(consumer.in_features, consumer.in_features, dtype=torch.float64,
                                 device=consumer.weight.device), "tokens": 0}

    def hook(module, args):
        flat = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
        state["gram"] += flat.T @ flat
        state["tokens"] += flat.shape[0]

    handle = consumer.register_forward_pre_hook(hook)
    try:
        run_layer(layer, inputs)
    finally:
        handle.remove()
    return state["gram"], state["tokens"]


@torch.no_grad()
def slimgpt_prune(
    model: nn.Module, scopes: Sequence[PrunableScope], layers: nn.ModuleList, calibration: torch.Tensor,
    sparsity: float, *, batch_size: int = 1, damp: float = 0.01, first_ratio: float = 0.0,
    dynamic_group_size: bool = True,
) -> tuple[nn.Module, BaselinePlan]:
    """SlimGPT at ``sparsity`` (share of the prunable attention + MLP parameters removed); ``calibration`` is
    ``[samples, seq_len]`` token ids, ``layers`` the decoder layers of ``model``. Returns a pruned copy (OBS-updated
    consumers, groups cut by hf-prune's surgery) and the plan; ``model`` is left unchanged."""
    layers_path = next(name for name, module in model.named_modules() if module is layers)
    pruned = copy.deepcopy(model)
    pruned_layers = pruned.get_submodule(layers_path)
    ratios = incremental_ratios(len(layers), sparsity, first_ratio)
    remove = removal_counts(model, scopes, ratios, sparsity)
    by_layer: dict[int, list[PrunableScope]] = {}
    for scope in scopes:
        by_layer.setdefault(scope.layer, []).append(scope)
    kept: dict[str, list[int]] = {}
    errors: dict[str, float] = {}
    steps_taken: dict[str, list[int]] = {}
    inputs = first_layer_inputs(pruned, pruned_layers, calibration.split(batch_size))
    for index, layer in enumerate(pruned_layers):
        for scope in sorted(by_layer.get(index, []), key=lambda s: s.kind != "attention"):  # attention first
            count = remove[scope.name]
            kept[scope.name] = list(range(scope.num_groups))
            if count == 0:
                continue
            consumer = pruned.get_submodule(scope.consumer.path)
            gram, tokens = _gram(layer, consumer, inputs)  # on the pruned prefix (and this layer's pruned attention)
            weight = consumer.weight.detach().to(torch.float64).clone()
            steps = dynamic_group_sizes(count) if scope.kind == "mlp" and dynamic_group_size else [1] * count
            removed, errors[scope.name] = obs_prune(weight, inverse_hessian(gram, tokens, damp),
                                                    scope.consumer.block, steps)
            consumer.weight.copy_(weight.to(consumer.weight.dtype))  # zero columns: the groups are gone already
            kept[scope.name] = sorted(set(range(scope.num_groups)) - set(removed))
            steps_taken[scope.name] = steps
        inputs = run_layer(layer, inputs)  # the pruned, updated layer feeds the next one
    apply_plan(pruned, scopes, kept)
    details = {"ratios": ratios, "first_ratio": first_ratio, "removed": remove, "damp": damp,
               "dynamic_group_size": dynamic_group_size, "group_sizes": steps_taken, "obs_error": errors}
    return pruned, BaselinePlan("slimgpt", kept, details=details)
