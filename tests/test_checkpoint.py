"""Reload contract: a pruned checkpoint reloads with its per-layer shapes, both with hf_prune
(registered Auto classes) and without it (trust_remote_code), offline, safetensors only."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hf_prune import save_pruned
from hf_prune.adapters import get_adapter
from hf_prune.cut.relabel import as_pruned_model
from hf_prune.cut.surgery import apply_plan
from hf_prune.errors import ModelLoadError
from hf_prune.io.checkpoint import load_model

from ._subprocess import run_without_hf_prune
from .conftest import make_model, random_plan


def pruned_checkpoint(family, tmp_path, input_ids):
    model = make_model(family, "sdpa")
    scopes = get_adapter(model).scopes(model)
    apply_plan(model, scopes, random_plan(model, seed=5))
    as_pruned_model(model, get_adapter(model).scopes(model), {"note": "test"})
    with torch.no_grad():
        logits = model(input_ids).logits
    output = save_pruned(model, None, tmp_path / "pruned")
    return model, logits, output


def test_reload_with_hf_prune_gives_identical_model(family, tmp_path, input_ids):
    model, logits, output = pruned_checkpoint(family, tmp_path, input_ids)
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == f"hf_prune_{family}"
    assert config["auto_map"]["AutoModelForCausalLM"] == f"modeling_hf_prune.{type(model).__name__}"
    assert sorted(p.name for p in output.iterdir() if p.suffix in (".bin", ".pt", ".pth")) == []

    reloaded = AutoModelForCausalLM.from_pretrained(output).eval()
    assert type(reloaded) is type(model)
    shapes = {name: tuple(p.shape) for name, p in reloaded.state_dict().items()}
    assert shapes == {name: tuple(p.shape) for name, p in model.state_dict().items()}
    dense_params = sum(p.numel() for p in make_model(family).parameters())
    assert sum(p.numel() for p in reloaded.parameters()) < dense_params
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids).logits, logits)
        tokens = reloaded.generate(input_ids[:1, :5], max_new_tokens=6, do_sample=False)
        assert torch.equal(tokens, model.generate(input_ids[:1, :5], max_new_tokens=6, do_sample=False))


def test_reload_without_hf_prune_through_trust_remote_code(family, tmp_path, input_ids):
    model, logits, output = pruned_checkpoint(family, tmp_path, input_ids)
    class_name, out = run_without_hf_prune(output, input_ids, tmp_path)
    assert class_name == type(model).__name__
    assert torch.equal(out["logits"], logits)
    with torch.no_grad():
        assert torch.equal(out["tokens"], model.generate(input_ids[:1, :5], max_new_tokens=6, do_sample=False))


def test_pickle_checkpoints_are_refused(tmp_path):
    model = make_model("llama")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(str(tmp_path))


def test_a_pruned_model_can_be_pruned_again(tmp_path, input_ids):
    _, _, output = pruned_checkpoint("qwen3", tmp_path, input_ids)
    model, _ = load_model(str(output), dtype="float32")
    scopes = get_adapter(model).scopes(model)
    plan = {scope.name: [0] for scope in scopes}
    apply_plan(model, scopes, plan)
    as_pruned_model(model, get_adapter(model).scopes(model), {})
    again = save_pruned(model, None, tmp_path / "again")
    reloaded = AutoModelForCausalLM.from_pretrained(again)
    assert all(s.num_groups == 1 for s in get_adapter(reloaded).scopes(reloaded))
    assert load_file(again / "model.safetensors")["model.layers.0.mlp.down_proj.weight"].shape[1] == 1
