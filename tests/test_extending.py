"""What CONTRIBUTING.md promises, done from outside the package: a criterion is one class plus one registration,
a family with a known layout is one entry. (A target: tests/test_targets.py.)"""

from __future__ import annotations

import json

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from hf_prune.adapters import FAMILIES, Family, get_adapter, register_family
from hf_prune.adapters.families import LLAMA_LAYOUT
from hf_prune.config import PruningConfig
from hf_prune.cut.masks import GroupMasks, keep_masks
from hf_prune.cut.relabel import as_pruned_model
from hf_prune.cut.surgery import apply_plan
from hf_prune.io.checkpoint import save_pruned
from hf_prune.plan.importance import Importance, register_importance
from hf_prune.plan.planner import prune
from hf_prune.registry import IMPORTANCES
from hf_prune.run.cli import main
from hf_prune.testing import TINY_SHAPES, random_plan


class ReverseIndexImportance(Importance):
    """A toy criterion: later groups matter more (data-free)."""

    def scores(self, model, scope, stats):
        return torch.arange(scope.num_groups, dtype=torch.float64) + 1.0


def test_a_criterion_from_outside_runs_from_the_command_line(tmp_path):
    register_importance("reverse_index")(ReverseIndexImportance)
    try:
        out = tmp_path / "out"
        assert main(["--importance", "reverse_index", "--sparsity", "0.3", "--output", str(out)]) == 0
        plan = json.loads((out / "hf_prune_report.json").read_text())
        assert plan["config"]["importance"] == "reverse_index"
        from safetensors.torch import load_file

        scores = load_file(out / "scores" / "importance.safetensors")["layers.0.mlp"]
        assert torch.equal(scores, torch.arange(344, dtype=torch.float64) + 1.0)
    finally:
        IMPORTANCES.unregister("reverse_index")


class ToyLlamaConfig(LlamaConfig):
    model_type = "toy_llama"


class ToyLlamaForCausalLM(LlamaForCausalLM):
    config_class = ToyLlamaConfig


def test_a_family_with_a_known_layout_is_one_entry(tmp_path):
    """A new architecture with the Llama module layout: one entry, and it prunes, saves and reloads exactly."""
    AutoConfig.register("toy_llama", ToyLlamaConfig, exist_ok=True)
    AutoModelForCausalLM.register(ToyLlamaConfig, ToyLlamaForCausalLM, exist_ok=True)
    register_family(Family("toy_llama", LLAMA_LAYOUT))
    try:
        torch.manual_seed(0)
        model = ToyLlamaForCausalLM(ToyLlamaConfig(**TINY_SHAPES)).eval()
        rows = torch.randint(0, TINY_SHAPES["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
        scopes = get_adapter(model).scopes(model)
        plan = random_plan(model, seed=3)
        with torch.no_grad(), GroupMasks(model, scopes, keep_masks(scopes, plan)):
            masked = model(rows).logits
        apply_plan(model, scopes, plan)
        as_pruned_model(model, get_adapter(model).scopes(model), {"note": "toy family"})
        assert type(model).__name__ == "PrunedToyLlamaForCausalLM"
        with torch.no_grad():
            cut = model(rows).logits
        torch.testing.assert_close(cut, masked, rtol=0, atol=1e-5)
        path = save_pruned(model, None, tmp_path / "out")
        assert json.loads((path / "config.json").read_text())["model_type"] == "hf_prune_toy_llama"
        with torch.no_grad():
            assert torch.equal(AutoModelForCausalLM.from_pretrained(path).eval()(rows).logits, cut)
        fresh = ToyLlamaForCausalLM(ToyLlamaConfig(**TINY_SHAPES)).eval()
        report = prune(fresh, PruningConfig(units="all", importance="magnitude", sparsity=0.3))
        assert abs(report.achieved_sparsity - 0.3) < 0.05
    finally:
        FAMILIES.unregister("toy_llama")
