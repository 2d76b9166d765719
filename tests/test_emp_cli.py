"""`hf-prune --target emp` end to end on all four families, recipes, and the EMP-specific options."""

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from hf_prune.adapters import get_adapter
from hf_prune.config import PruningConfig, load_recipe, split_options
from hf_prune.run.cli import build_prune_parser, main, prune_settings
from hf_prune.testing import save_tiny_checkpoint, write_calibration_file

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.fixture
def calibration(tmp_path):
    return write_calibration_file(tmp_path / "calib.jsonl")


def run(capsys, *argv):
    """The command with a data-free recipe on both kinds of groups unless the arguments say otherwise."""
    code = main(["--importance", "magnitude", "--units", "all", *[str(a) for a in argv]])
    return code, capsys.readouterr()


@pytest.mark.parametrize("importance", ["activation", "taylor"])
def test_emp_prunes_every_family_to_the_budget(capsys, tmp_path, family, calibration, importance):
    model_dir = save_tiny_checkpoint(family, tmp_path / "model")
    out = tmp_path / "out"
    code, captured = run(capsys, "--model", model_dir, "--target", "emp", "--sparsity", "0.3",
                         "--importance", importance, "--calibration", calibration,
                         "--calibration-samples", "4", "--seq-len", "32", "--compensate", "bias", "--output", out)
    assert code == 0, captured.err
    assert "uniform KV" in captured.out and "EMP: beta =" in captured.out
    report = json.loads((out / "hf_prune_report.json").read_text())
    # within one group of the target
    dense = AutoModelForCausalLM.from_pretrained(model_dir)
    largest_group = max(scope.params_per_group(dense) for scope in get_adapter(dense).scopes(dense))
    removed = report["prunable_before"] - report["prunable_after"]
    assert 0 <= removed - 0.3 * report["prunable_before"] <= largest_group
    assert report["calibration_tokens"] == 4 * 32
    assert {"allocation.png", "scores", "README.md"} <= {p.name for p in out.iterdir()}
    assert (out / "scores" / "importance.safetensors").is_file() and not list(out.glob("importance*"))
    assert (out / "allocation.png").stat().st_size > 10_000
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in reloaded.parameters()) == report["params_after"]


def test_emp_with_magnitude_needs_no_calibration(capsys, tmp_path):
    model_dir = save_tiny_checkpoint("qwen3", tmp_path / "model")
    code, captured = run(capsys, "--model", model_dir, "--target", "emp", "--sparsity", "0.3", "--output", tmp_path / "o")
    assert code == 0, captured.err


def test_raw_beta_rule_and_conflicting_budget(capsys, tmp_path):
    model_dir = save_tiny_checkpoint("llama", tmp_path / "model")
    code, captured = run(capsys, "--model", model_dir, "--target", "emp", "--beta", "0.8", "--output", tmp_path / "o")
    assert code == 0, captured.err
    assert "with the raw EMP rule, beta = 0.8" in captured.out
    code, captured = run(capsys, "--model", model_dir, "--target", "emp", "--beta", "0.8", "--sparsity", "0.3",
                         "--output", tmp_path / "o2")
    assert code == 2 and "either sparsity" in captured.err
    code, captured = run(capsys, "--model", model_dir, "--beta", "0.8", "--output", tmp_path / "o3")
    assert code == 2 and "beta applies to --target emp only" in captured.err


def test_data_driven_importance_without_calibration_is_a_clear_error(capsys, tmp_path):
    model_dir = save_tiny_checkpoint("llama", tmp_path / "model")
    code, captured = run(capsys, "--model", model_dir, "--importance", "fluctuation", "--output", tmp_path / "o")
    assert code == 2
    assert "needs calibration text: pass --calibration" in captured.err
    assert not (tmp_path / "o").exists()


def test_mlp_multiple_rounds_mlp_widths(capsys, tmp_path):
    model_dir = save_tiny_checkpoint("mistral", tmp_path / "model", intermediate_size=128)
    out = tmp_path / "out"
    code, captured = run(capsys, "--model", model_dir, "--target", "emp", "--sparsity", "0.3", "--units", "mlp",
                         "--mlp-multiple", "32", "--output", out)
    assert code == 0, captured.err
    for row in json.loads((out / "hf_prune_report.json").read_text())["layers"]:
        assert row["neurons_after"] % 32 == 0


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipes_are_valid_configs(recipe):
    pruning, run = split_options(load_recipe(recipe))
    config = PruningConfig.from_dict(pruning)
    assert not run, "the shipped recipes leave model and output to the command line"
    assert config.calibration.source and config.importance != "magnitude"
    assert "measured:" in recipe.read_text(), "a recipe states the measurement it rests on"


def test_flags_override_recipe_values(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("target: emp\nsparsity: 0.2\nimportance: activation\ncalibration: data.jsonl\nseq_len: 64\n")
    parser = build_prune_parser()
    config = prune_settings(parser.parse_args(["--recipe", str(recipe), "--sparsity", "0.4"]))[0]
    assert (config.target, config.sparsity, config.importance, config.calibration.seq_len) == ("emp", 0.4, "activation", 64)
    config = prune_settings(parser.parse_args(["--recipe", str(recipe), "--beta", "1.0"]))[0]
    assert config.beta == 1.0 and config.sparsity is None
    config = prune_settings(parser.parse_args(["--recipe", str(recipe), "--no-sequential", "--seq-len", "16"]))[0]
    assert config.calibration.sequential is False and config.calibration.seq_len == 16


def test_bad_recipe_paths_and_contents(capsys, tmp_path):
    code, captured = run(capsys, "--recipe", tmp_path / "missing.yaml")
    assert code == 2 and "does not exist" in captured.err
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    code, captured = run(capsys, "--recipe", bad)
    assert code == 2 and "must be a mapping" in captured.err


def test_sequential_calibration_gives_the_same_checkpoint(capsys, tmp_path, calibration):
    model_dir = save_tiny_checkpoint("qwen2", tmp_path / "model")
    common = ["--model", model_dir, "--target", "emp", "--importance", "activation", "--sparsity", "0.3",
              "--calibration", calibration, "--calibration-samples", "4", "--seq-len", "32"]
    assert run(capsys, *common, "--output", tmp_path / "full")[0] == 0
    assert run(capsys, *common, "--sequential", "--output", tmp_path / "seq")[0] == 0
    full = json.loads((tmp_path / "full" / "config.json").read_text())["pruned_linear_shapes"]
    seq = json.loads((tmp_path / "seq" / "config.json").read_text())["pruned_linear_shapes"]
    assert full == seq
