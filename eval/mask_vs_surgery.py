"""Measure, for every supported family, how exactly surgery reproduces the masked model.

For each family and attention implementation: a random per-layer plan is applied once as masks and
once as surgery, and the maximum absolute logit difference is printed, together with the parameter
counts before/after and the difference after a save / from_pretrained round trip. Run:

    HF_HUB_OFFLINE=1 python eval/mask_vs_surgery.py
"""

from __future__ import annotations

import tempfile

import torch
from transformers import AutoModelForCausalLM

import hf_prune
from hf_prune.adapters import count_parameters, get_adapter
from hf_prune.cut.masks import GroupMasks, keep_masks
from hf_prune.cut.relabel import as_pruned_model
from hf_prune.cut.surgery import apply_plan
from hf_prune.testing import TINY_SHAPES, families, make_tiny_model, random_plan


def measure(family: str, attn_implementation: str, seed: int) -> dict[str, float]:
    model = make_tiny_model(family, attn_implementation, seed=seed)
    input_ids = torch.randint(0, TINY_SHAPES["vocab_size"], (4, 64), generator=torch.Generator().manual_seed(seed))
    plan = random_plan(model, seed=seed)
    scopes = get_adapter(model).scopes(model)
    params_before = count_parameters(model)
    with torch.no_grad():
        dense = model(input_ids).logits
        with GroupMasks(model, scopes, keep_masks(scopes, plan)):
            masked = model(input_ids).logits
        apply_plan(model, scopes, plan)
        sliced = model(input_ids).logits
        as_pruned_model(model, get_adapter(model).scopes(model), {})
        with tempfile.TemporaryDirectory() as directory:
            path = hf_prune.save_pruned(model, None, f"{directory}/pruned")
            reloaded = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn_implementation).eval()
            reloaded_logits = reloaded(input_ids).logits
    return {
        "params_before": params_before,
        "params_after": count_parameters(model),
        "mask_vs_dense": (masked - dense).abs().max().item(),
        "mask_vs_surgery": (masked - sliced).abs().max().item(),
        "surgery_vs_reload": (sliced - reloaded_logits).abs().max().item(),
    }


def main() -> None:
    print("| family | attention | params dense -> pruned (seed 2) | max |logit change| by pruning (seed 2) | "
          "max |Δ| mask vs surgery (3 seeds) | max |Δ| surgery vs reload (3 seeds) |")
    print("|---|---|---|---|---|---|")
    for family in families():
        for attn_implementation in ("eager", "sdpa"):
            worst: dict[str, float] = {}
            for seed in range(3):
                result = measure(family, attn_implementation, seed)
                for key, value in result.items():
                    worst[key] = max(worst.get(key, value), value) if "vs" in key else value
            print(f"| {family} | {attn_implementation} | {worst['params_before']:,} -> {worst['params_after']:,} "
                  f"(seed 2) | {worst['mask_vs_dense']:.3f} | {worst['mask_vs_surgery']:.2e} | "
                  f"{worst['surgery_vs_reload']:.2e} |")


if __name__ == "__main__":
    main()
