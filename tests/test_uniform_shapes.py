"""``--uniform-shapes``: a uniformly pruned model saved as its family's stock class and config, which loads
where hf-prune cannot be imported and computes what the hf-prune checkpoint computes."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_prune.run.cli import main
from hf_prune.testing import save_tiny_checkpoint

from ._subprocess import run_without_hf_prune

STOCK_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM"}
DATA_FREE = ["--importance", "magnitude", "--units", "all", "--sparsity", "0.4"]


def test_stock_checkpoint_loads_without_hf_prune_and_equals_the_pruned_one(family, tmp_path, capsys):
    base = save_tiny_checkpoint(family, tmp_path / "base")
    assert main([*DATA_FREE, "--model", base, "--output", str(tmp_path / "pruned")]) == 0
    assert main([*DATA_FREE, "--model", base, "--uniform-shapes", "--output", str(tmp_path / "stock")]) == 0
    capsys.readouterr()
    config = json.loads((tmp_path / "stock" / "config.json").read_text())
    assert config["model_type"] == family and "auto_map" not in config
    assert "pruned_linear_shapes" not in config
    assert not (tmp_path / "stock" / "modeling_hf_prune.py").exists()
    assert config["num_attention_heads"] == config["num_key_value_heads"] * 2  # the tiny models have 2 q per kv
    assert "Load" in (tmp_path / "stock" / "README.md").read_text()

    input_ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    class_name, outputs = run_without_hf_prune(tmp_path / "stock", input_ids, tmp_path)
    assert class_name == STOCK_CLASSES[family]
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    with torch.no_grad():
        expected = pruned(input_ids).logits
        tokens = pruned.generate(input_ids[:1, :5], max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(outputs["logits"], expected, rtol=0, atol=1e-5)
    assert torch.equal(outputs["tokens"], tokens)


@pytest.mark.parametrize("flags, message", [
    (["--target", "emp"], "use --target uniform"),
    (["--compensate", "bias", "--importance", "activation"], "drop one of the two"),
])
def test_shapes_a_stock_config_cannot_hold_are_refused_before_loading(tmp_path, capsys, flags, message):
    code = main(["--uniform-shapes", *flags, "--output", str(tmp_path / "o")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
