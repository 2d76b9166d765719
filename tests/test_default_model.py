"""The embedded default model: the README's main job, and every target on it, reloaded in fresh processes."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from transformers import AutoModelForCausalLM

from hf_prune.data import DEFAULT_MODEL_DIR
from hf_prune.testing import write_calibration_file

from ._subprocess import run_python


def hf_prune_cli(*args):
    result = subprocess.run([sys.executable, "-m", "hf_prune", *[str(a) for a in args]], capture_output=True,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_default_is_a_trained_llama_shipped_in_the_package():
    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_key_value_heads"] < config["num_attention_heads"]
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size <= 3 * 1024 * 1024


def test_readme_main_job_writes_a_checkpoint_that_reloads_both_ways(tmp_path):
    out = tmp_path / "pruned-default"
    result = hf_prune_cli("--target", "uniform", "--sparsity", "0.5", "--output", out)
    assert "achieved 50.00%" in result.stdout
    params_after = json.loads((out / "hf_prune_report.json").read_text())["params_after"]
    check = """
        import sys, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        path = {path!r}
        model = AutoModelForCausalLM.from_pretrained(path, {kwargs}).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, {kwargs})
        ids = tokenizer("The LORD is my shepherd", return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
        assert out.shape[1] == ids.shape[1] + 8
        print(sum(p.numel() for p in model.parameters()), type(model).__name__, "hf_prune" in sys.modules)
    """
    check = textwrap.dedent(check)
    with_plugin = run_python("import hf_prune\n" + check.format(path=str(out), kwargs=""))
    without = run_python(check.format(path=str(out), kwargs="trust_remote_code=True"), block_hf_prune=True)
    assert with_plugin.stdout.split() == [str(params_after), "PrunedLlamaForCausalLM", "True"]
    assert without.stdout.split() == [str(params_after), "PrunedLlamaForCausalLM", "False"]


@pytest.mark.parametrize("target, extra", [
    ("emp", ["--importance", "activation", "--compensate", "bias"]),
    ("hyperflux", ["--steps", "30", "--tick-every", "5", "--regrowth-steps", "5", "--gate-lr", "0.02"]),
])
def test_every_target_runs_on_the_default(tmp_path, target, extra):
    calibration = write_calibration_file(tmp_path / "calib.jsonl")
    out = tmp_path / target
    hf_prune_cli("--target", target, "--sparsity", "0.3", "--calibration", calibration, "--calibration-samples", "8",
                 "--seq-len", "64", *extra, "--output", out)
    report = json.loads((out / "hf_prune_report.json").read_text())
    assert abs(report["achieved_sparsity"] - 0.3) < 0.02
    assert sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(out).parameters()) == report["params_after"]
