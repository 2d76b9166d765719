"""ShortGPT: remove whole decoder layers with the lowest Block Influence — a depth-pruning reference.

Men et al., "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect", arXiv
2403.03853, the method section's Block Influence: BI_i = 1 - E_{X,t} [cos(x_{i,t}, x_{i+1,t})], the
cosine between a token's hidden state entering layer i and leaving it; layers with the lowest BI are
deleted. The authors released no code; followed here is the implementation their README points
readers to, ``sramshetty/ShortGPT`` ``short_gpt/metrics.py`` ``block_influence`` (``1 - sim`` per token,
summed over tokens) and ``short_gpt/short_llama.py`` ``ShortLlama.compute_bi`` / ``remove_layers``
(``np.argsort(importances)[:n_prune_layers]``). With the same number of tokens per layer, their sum
ranks layers as our mean does.

Budget: the share of prunable (attention + MLP) parameters removed is rounded to the nearest whole
number of layers; the achieved share is reported. Layer norms of a removed layer go too but are not
counted (they are not prunable parameters for the other methods either).

Evaluation: a removed layer is replaced by an identity module (``common.IdentityLayer``), which is
exactly deleting it: the residual stream passes unchanged. Masking every KV group and neuron of the
layer gives the same model only when ``o_proj`` / ``down_proj`` have no bias (a masked consumer
still adds its bias); the tests check both on a bias-free model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hf_prune.adapters import PrunableScope, prunable_parameters

from .common import BaselinePlan, hidden_of


@torch.no_grad()
def block_influence(model: nn.Module, layers: nn.ModuleList, calibration: torch.Tensor, batch_size: int = 1) -> torch.Tensor:
    """BI of every decoder layer: mean over calibration tokens of 1 - cos(layer input, layer output)."""
    totals = torch.zeros(len(layers), dtype=torch.float64)
    tokens = 0
    inputs: dict[int, torch.Tensor] = {}

    def before(index):
        def hook(module, args, kwargs):
            inputs[index] = hidden_of(args, kwargs)
        return hook

    def after(index):
        def hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(inputs.pop(index).double(), out.double(), dim=-1)
            totals[index] += (1.0 - cos).sum().cpu()
        return hook

    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(before(index), with_kwargs=True))
        handles.append(layer.register_forward_hook(after(index), with_kwargs=True))
    device = next(model.parameters()).device
    try:
        for batch in calibration.split(batch_size):
            model(batch.to(device), use_cache=False)
            tokens += batch.numel()
    finally:
        for handle in handles:
            handle.remove()
    return totals / tokens


def shortgpt_plan(model: nn.Module, scopes: Sequence[PrunableScope], layers: nn.ModuleList, calibration: torch.Tensor,
                  sparsity: float, *, batch_size: int = 1, bi: torch.Tensor | None = None) -> BaselinePlan:
    """Remove the ``round(sparsity * L)`` layers (by parameters) with the lowest Block Influence
    (``bi`` from :func:`block_influence` may be passed to plan several budgets from one pass)."""
    per_layer = [0] * len(layers)
    for scope in scopes:
        per_layer[scope.layer] += scope.num_groups * scope.params_per_group(model)
    mean_layer = sum(per_layer) / len(per_layer)
    count = min(len(layers) - 1, max(0, round(sparsity * prunable_parameters(model, list(scopes)) / mean_layer)))
    bi = bi if bi is not None else block_influence(model, layers, calibration, batch_size)
    removed = sorted(torch.sort(bi, stable=True).indices[:count].tolist())
    return BaselinePlan("shortgpt", removed_layers=removed, details={"block_influence": bi.tolist(), "layers_removed": count})
