"""The hf-prune command: a working run, and a one-line error (exit 2) for each kind of bad input."""

import json

import pytest
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from hf_prune.run.cli import build_prune_parser, main

from .conftest import make_model


@pytest.fixture
def llama_dir(tmp_path):
    path = tmp_path / "llama"
    make_model("llama").save_pretrained(path)
    return path


#: a data-free run on both kinds of groups: these tests exercise the command, not the default recipe
DATA_FREE = ["--importance", "magnitude", "--units", "all"]


def run_cli(capsys, *argv):
    code = main([*DATA_FREE, *[str(a) for a in argv]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("hf-prune: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_prune_run_writes_a_checkpoint_and_prints_the_summary(capsys, llama_dir, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, "--model", llama_dir, "--sparsity", "0.5", "--output", out)
    assert code == 0
    assert "KV groups" in stdout and "MLP neurons" in stdout
    assert "achieved 50.00%" in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["hf_prune"]["achieved_sparsity"] == pytest.approx(0.5)
    assert config["hf_prune"]["params_after"] < config["hf_prune"]["params_before"]
    assert {"model.safetensors", "modeling_hf_prune.py", "README.md", "generation_config.json"} <= {
        p.name for p in out.iterdir()
    }


def test_units_mlp_keeps_every_kv_group_and_still_meets_the_budget(capsys, llama_dir, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, "--model", llama_dir, "--sparsity", "0.3", "--units", "mlp", "--output", out)
    assert code == 0
    shapes = json.loads((out / "config.json").read_text())["pruned_linear_shapes"]
    assert shapes["model.layers.0.self_attn.k_proj"][0] == 4 * 8  # 4 KV groups x head_dim 8, untouched
    achieved = json.loads((out / "config.json").read_text())["hf_prune"]["achieved_sparsity"]
    assert abs(achieved - 0.3) < 0.02


def test_help_explains_every_flag():
    parser = build_prune_parser()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"


@pytest.mark.parametrize("sparsity", ["1.0", "-0.1", "1.5"])
def test_sparsity_outside_unit_interval(capsys, llama_dir, tmp_path, sparsity):
    code, _, err = run_cli(capsys, "--model", llama_dir, f"--sparsity={sparsity}", "--output", tmp_path / "o")
    assert_one_line_error(code, err, "sparsity must be in (0, 1)")
    assert not (tmp_path / "o").exists()


def test_budget_that_would_empty_a_layer(capsys, llama_dir, tmp_path):
    code, _, err = run_cli(capsys, "--model", llama_dir, "--sparsity", "0.9", "--output", tmp_path / "o")
    assert_one_line_error(code, err, "would remove all 4 kv_groups", "lower --sparsity")
    assert not (tmp_path / "o").exists()


def test_unknown_architecture(capsys, tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    code, _, err = run_cli(capsys, "--model", tmp_path / "gpt2", "--output", tmp_path / "o")
    assert_one_line_error(code, err, "'gpt2' is not supported", "llama, mistral, qwen2, qwen3")


def test_missing_model_path(capsys, tmp_path):
    code, _, err = run_cli(capsys, "--model", tmp_path / "nowhere", "--output", tmp_path / "o")
    assert_one_line_error(code, err, "does not exist")


def test_unreadable_model_directory(capsys, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ this is not json")
    code, _, err = run_cli(capsys, "--model", broken, "--output", tmp_path / "o")
    assert_one_line_error(code, err, "cannot read a model config")


def test_non_empty_output_needs_overwrite(capsys, llama_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    code, _, err = run_cli(capsys, "--model", llama_dir, "--output", out)
    assert_one_line_error(code, err, "not empty", "--overwrite")
    assert (out / "keep.txt").read_text() == "user data"

    code, _, _ = run_cli(capsys, "--model", llama_dir, "--output", out, "--overwrite")
    assert code == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_failure_while_writing_leaves_no_output_directory(capsys, llama_dir, tmp_path, monkeypatch):
    def broken_save(self, directory, *args, **kwargs):
        (directory / "config.json").write_text("{}")  # something was written already ...
        raise RuntimeError("disk full")  # ... and then the write fails

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", broken_save)
    out_parent = tmp_path / "outputs"
    with pytest.raises(RuntimeError, match="disk full"):
        main([*DATA_FREE, "--model", str(llama_dir), "--output", str(out_parent / "out")])
    assert list(out_parent.iterdir()) == []


def test_output_path_that_is_a_file(capsys, llama_dir, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    code, _, err = run_cli(capsys, "--model", llama_dir, "--output", target)
    assert_one_line_error(code, err, "is a file")


def test_unknown_target_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--target", "magic"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_model_with_a_single_kv_group_keeps_it(capsys, tmp_path):
    """A layer with one KV group cannot lose it: uniform pruning then needs --units mlp."""
    path = tmp_path / "mqa"
    make_model("llama", num_key_value_heads=1).save_pretrained(path)
    code, _, err = run_cli(capsys, "--model", path, "--sparsity", "0.6", "--output", tmp_path / "o")
    assert_one_line_error(code, err, "would remove all 1 kv_groups")
    code, _, _ = run_cli(capsys, "--model", path, "--sparsity", "0.3", "--units", "mlp", "--output", tmp_path / "o")
    assert code == 0
